//! End-to-end tests: the real server over HTTP against the sandbox, driven
//! as a browser would, asserting what a person or an attacker sees and what
//! the sandbox recorded.

mod abuse;
mod admin;
mod attacks;
mod audit;
mod browser;
mod cleanup;
mod cli;
mod config;
mod connections;
mod demo;
mod expiry;
mod failures;
mod forwarding;
mod helpers;
mod jobs;
mod json;
mod logins;
mod metrics;
mod pages;
mod policy;
mod races;
mod recipes;
mod replicas;
mod rotation;
mod signin;
mod upstream;
mod usage;
