"""Pure decisions shared by the live router and the simulator: no clocks, sockets, torch or RNG."""
