//! DeepIntShield's bench kit: the pieces of the open-loop load tool (`deepintshield-load`) and of
//! the mock upstream (`deepintshield-mock`) that are worth testing on their own.

pub mod anthropic;
pub mod azure;
pub mod bedrock;
pub mod bedrock_stream;
pub mod completion;
pub mod dist;
pub mod embeddings;
pub mod engine;
pub mod faults;
pub mod flags;
pub mod gemini;
pub mod legacy;
pub mod procfs;
pub mod report;
pub mod request;
pub mod response;
pub mod responses;
pub mod schedule;
pub mod sse;
pub mod tools;
