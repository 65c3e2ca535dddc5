//! The configuration file exactly as written: serde structs mirroring the TOML, every leaf kept
//! with its byte span so that validation can point at it.
//!
//! No defaults are applied and nothing is checked here beyond TOML types and key names
//! (`deny_unknown_fields` everywhere); `validate` turns these into the typed structs.

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;
use std::ops::Deref;

use serde::de::value::MapAccessDeserializer;
use serde::de::{self, Deserialize, Deserializer, MapAccess, Visitor};
use serde::Deserialize as DeriveDeserialize;
use toml::Spanned;

#[derive(Debug, Default, DeriveDeserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub runtime: Table<RawRuntime>,
    #[serde(default)]
    pub admin: Table<RawAdmin>,
    #[serde(default)]
    pub listeners: BTreeMap<Spanned<String>, Table<RawListener>>,
    #[serde(default)]
    pub pools: BTreeMap<Spanned<String>, Table<RawPool>>,
}

#[derive(Debug, Default, DeriveDeserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRuntime {
    pub workers: Option<Spanned<Int>>,
    pub max_connections: Option<Spanned<Int>>,
    pub shutdown_grace: Option<Spanned<String>>,
    pub user: Option<Spanned<String>>,
    pub splice: Option<Spanned<String>>,
    pub log_connections: Option<Spanned<bool>>,
    pub pid_file: Option<Spanned<String>>,
}

#[derive(Debug, Default, DeriveDeserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub bind: Option<Spanned<String>>,
}

#[derive(Debug, DeriveDeserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    pub bind: Spanned<String>,
    pub pool: Spanned<String>,
    pub max_connections: Option<Spanned<Int>>,
}

#[derive(Debug, DeriveDeserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPool {
    pub balance: Option<Spanned<String>>,
    pub connect_timeout: Option<Spanned<String>>,
    pub idle_timeout: Option<Spanned<String>>,
    pub retries: Option<Spanned<Int>>,
    pub queue_timeout: Option<Spanned<String>>,
    pub retry_on_empty_response: Option<Spanned<bool>>,
    pub hash_table_size: Option<Spanned<Int>>,
    pub health: Option<Table<RawHealth>>,
    #[serde(default)]
    pub servers: Vec<Table<RawServer>>,
}

/// `[pools.NAME.health]`: how the prober checks the pool's servers.
#[derive(Debug, Default, DeriveDeserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    pub check: Option<Spanned<String>>,
    pub interval: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
    pub rise: Option<Spanned<Int>>,
    pub fall: Option<Spanned<Int>>,
    pub path: Option<Spanned<String>>,
    pub expect_status: Option<Spanned<String>>,
    pub host: Option<Spanned<String>>,
    pub send: Option<Spanned<String>>,
    pub expect: Option<Spanned<String>>,
    pub passive_fall: Option<Spanned<Int>>,
    pub on_all_down: Option<Spanned<String>>,
    pub initial_state: Option<Spanned<String>>,
}

#[derive(Debug, DeriveDeserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub addr: Spanned<String>,
    pub weight: Option<Spanned<Int>>,
    pub name: Option<Spanned<String>>,
    pub backup: Option<Spanned<bool>>,
    pub max_connections: Option<Spanned<Int>>,
    pub slow_start: Option<Spanned<String>>,
    pub check: Option<Spanned<bool>>,
    pub check_port: Option<Spanned<Int>>,
}

/// A TOML integer. Ranges are checked in `validate` so that every integer key reports
/// "must be between A and B" in the same words instead of serde's "expected u32".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Int(pub i64);

impl<'de> Deserialize<'de> for Int {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct IntVisitor;

        impl Visitor<'_> for IntVisitor {
            type Value = Int;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an integer")
            }

            fn visit_i64<E: de::Error>(self, value: i64) -> Result<Int, E> {
                Ok(Int(value))
            }

            fn visit_u64<E: de::Error>(self, value: u64) -> Result<Int, E> {
                i64::try_from(value).map(Int).map_err(|_| E::invalid_value(de::Unexpected::Unsigned(value), &self))
            }
        }

        deserializer.deserialize_i64(IntVisitor)
    }
}

/// A struct that must be written as a TOML table. serde's derived structs also accept an array
/// of their fields in order, which would make `[[listeners.web]]` report a confusing
/// "expected a string"; this wrapper says "expected a table" instead.
#[derive(Debug, Default)]
pub struct Table<T>(pub T);

impl<T> Deref for Table<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Table<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TableVisitor<T>(PhantomData<T>);

        impl<'de, T: Deserialize<'de>> Visitor<'de> for TableVisitor<T> {
            type Value = Table<T>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a table")
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Table<T>, A::Error> {
                T::deserialize(MapAccessDeserializer::new(map)).map(Table)
            }
        }

        deserializer.deserialize_map(TableVisitor(PhantomData))
    }
}
