//! Node configuration (to be written).
