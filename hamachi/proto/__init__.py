"""Pure state machines: no sockets, no clocks, no threads. Time comes in as `now`."""
