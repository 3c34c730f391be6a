//! Test support shared by the integration tests and the fuzz crate (which includes this
//! folder by path): a reference model of the spec and a harness that checks the
//! scheduler against it.
#![allow(dead_code)]

pub mod decode;
pub mod discord_budget;
pub mod fuzzing;
pub mod harness;
pub mod model;
