//! Workloads: the conversational session generator, its distributions, and the content model.

pub mod content;
pub mod conversation;
pub mod dist;
