//! Helpers of the flow's tests.

pub mod otlp_receiver;
