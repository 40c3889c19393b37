//! Server wiring (to be written).
