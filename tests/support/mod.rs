//! Test support shared by the integration tests: the mock Hub and a real FUSE mount of the
//! `modelfs` binary against it.
#![allow(dead_code)]

pub mod metrics;
pub mod mock_hub;
pub mod models;
pub mod mount;
pub mod python;
pub mod s3_proxy;
pub mod tier;
