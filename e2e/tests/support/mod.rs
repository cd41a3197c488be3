//! Helpers shared by the end-to-end test files: an HTTP client and a
//! recording stand-in for Dapr (the kubelet's CRI calls are
//! `testbed::kubelet`). (Each test file compiles this module on its own and
//! uses part of it.)
#![allow(dead_code)]

pub mod dapr_recorder;
pub mod http;
