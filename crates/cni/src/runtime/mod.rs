//! Runtime side.
