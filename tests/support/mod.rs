//! Test support shared by the integration tests and the fuzz crate (which includes this
//! folder by path): a reference model of the rules and a harness that checks the
//! scheduler against it, Discord's budget as Discord keeps it, the one judge of
//! Discord's rules and the one `limit()`.
#![allow(dead_code)]

pub mod decode;
pub mod discord_budget;
pub mod fuzzing;
pub mod harness;
pub mod judge;
pub mod limit;
pub mod model;
