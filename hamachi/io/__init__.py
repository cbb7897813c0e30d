"""The only layer that touches asyncio, sockets, TUN/TAP devices, clocks and the OS."""
