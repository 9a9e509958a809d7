//! One pass over the variables: each goes to the reader of its kind ([`limits`](super::limits)
//! or [`settings`](super::settings)), and a value that reader cannot use becomes one
//! [`ConfigError`].

use super::limits::Limits;
use super::settings;
use super::{Config, ConfigError};

/// A variable as the environment gives it.
#[derive(Clone, Copy)]
pub(super) struct Var<'a> {
    pub name: &'a str,
    pub value: &'a str,
}

impl Var<'_> {
    /// The one line the user sees about this variable.
    fn refused(self, r: Refusal) -> ConfigError {
        ConfigError {
            variable: self.name.to_string(),
            value: self.value.to_string(),
            problem: r.problem,
            accepted: r.accepted,
            consequence: r.consequence,
        }
    }
}

/// Why a value is not used: the problem, what is accepted, and what is done instead.
pub(super) struct Refusal {
    problem: String,
    accepted: &'static str,
    consequence: &'static str,
}

impl Refusal {
    pub(super) fn new(problem: impl Into<String>, accepted: &'static str, consequence: &'static str) -> Self {
        Refusal { problem: problem.into(), accepted, consequence }
    }
}

impl Config {
    /// Parses the variables we know; unrelated ones are ignored.
    pub fn from_vars<'a>(vars: impl IntoIterator<Item = (&'a str, &'a str)>) -> (Config, Vec<ConfigError>) {
        let mut config = Config::default();
        let mut limits = Limits::default();
        let mut errors = Vec::new();
        for (name, value) in vars {
            let var = Var { name, value };
            let read = limits.read(var).unwrap_or_else(|| settings::read(&mut config, var));
            if let Err(refusal) = read {
                errors.push(var.refused(refusal));
            }
        }
        limits.apply(&mut config);
        (config, errors)
    }
}
