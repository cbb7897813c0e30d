"""Keys, the Noise IK handshake, transport sessions and the replay window. Pure: no I/O."""
