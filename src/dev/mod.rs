//! Developer tools: a Graph API simulator and a webhook builder, so the whole loop can be tried without a Meta account.

pub mod graph_sim;
pub mod webhook;
