//! Backend selection algorithms for rampart. Pure code: no I/O, no clocks;
//! time is passed in by the caller as nanoseconds.
