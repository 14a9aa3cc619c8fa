//! SMART v2 system scopes (SMART App Launch 2.x, "Scopes and Launch Context", section "Scopes for
//! requesting FHIR resources"): `system/<Type|*>.<subset of cruds, in that order>`.
//!
//! | letter | [`Interaction`] | FHIR interactions it covers |
//! |---|---|---|
//! | `c` | `Create` | create (including conditional create) |
//! | `r` | `Read` | read, vread, history-instance |
//! | `u` | `Update` | update, patch |
//! | `d` | `Delete` | delete |
//! | `s` | `Search` | search-type, history-type |
//!
//! SMART v1 scopes on the system context are accepted and mapped as SMART 2.x's scope
//! equivalence table says: `read` = `rs`, `write` = `cud`, `*` = `cruds`. They are always
//! rendered back in v2 form, so a v1 client asking for `system/Task.read` is granted
//! `system/Task.rs` (RFC 6749 section 3.3 lets the server grant a scope that differs from the
//! request, and the token response says which).
//!
//! Not supported (parsed as errors rather than silently widened or narrowed): `patient/` and
//! `user/` contexts, OpenID scopes, and SMART v2 granular scopes with a query
//! (`system/Observation.rs?category=...`).

use std::collections::BTreeMap;
use std::fmt;

/// What a request wants to do with a resource type, in SMART v2 terms (see the module table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Interaction {
    Create,
    Read,
    Update,
    Delete,
    Search,
}

impl Interaction {
    const ALL: [Interaction; 5] =
        [Interaction::Create, Interaction::Read, Interaction::Update, Interaction::Delete, Interaction::Search];

    fn letter(self) -> char {
        match self {
            Self::Create => 'c',
            Self::Read => 'r',
            Self::Update => 'u',
            Self::Delete => 'd',
            Self::Search => 's',
        }
    }

    fn bit(self) -> u8 {
        match self {
            Self::Create => 1,
            Self::Read => 1 << 1,
            Self::Update => 1 << 2,
            Self::Delete => 1 << 3,
            Self::Search => 1 << 4,
        }
    }

    fn from_letter(letter: char) -> Option<Self> {
        Self::ALL.into_iter().find(|i| i.letter() == letter)
    }

    /// Position in `cruds`, used to enforce the SMART v2 ordering rule.
    fn rank(self) -> usize {
        match self {
            Self::Create => 0,
            Self::Read => 1,
            Self::Update => 2,
            Self::Delete => 3,
            Self::Search => 4,
        }
    }
}

/// A scope string that is not a supported SMART system scope.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScopeError {
    #[error("no scope was requested")]
    Empty,
    #[error("the scope string is longer than {max} bytes or has more than {max_scopes} scopes")]
    TooLong { max: usize, max_scopes: usize },
    #[error("only system/ scopes are supported")]
    NotSystemContext,
    #[error("a scope is not of the form system/<Type|*>.<permissions>")]
    Malformed,
    #[error("a scope names an invalid resource type")]
    InvalidResourceType,
    #[error("a scope has no permissions")]
    MissingPermissions,
    #[error("a scope has a permission letter other than c, r, u, d, s")]
    UnknownPermission,
    #[error("a scope repeats a permission letter")]
    RepeatedPermission,
    #[error("a scope's permission letters are not in cruds order")]
    OutOfOrderPermissions,
    #[error("granular scopes (with a query) are not supported")]
    GranularNotSupported,
    #[error("none of the requested scopes is within the client's registration")]
    NothingGranted,
}

impl ScopeError {
    /// A stable short string for logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Empty => "scope_empty",
            Self::TooLong { .. } => "scope_too_long",
            Self::NotSystemContext => "scope_not_system",
            Self::Malformed => "scope_malformed",
            Self::InvalidResourceType => "scope_invalid_resource_type",
            Self::MissingPermissions => "scope_missing_permissions",
            Self::UnknownPermission => "scope_unknown_permission",
            Self::RepeatedPermission => "scope_repeated_permission",
            Self::OutOfOrderPermissions => "scope_out_of_order_permissions",
            Self::GranularNotSupported => "scope_granular_not_supported",
            Self::NothingGranted => "scope_nothing_granted",
        }
    }
}

/// A non-empty subset of `cruds`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
struct Permissions(u8);

impl Permissions {
    const ALL: Permissions = Permissions(0b1_1111);

    fn contains(self, interaction: Interaction) -> bool {
        self.0 & interaction.bit() != 0
    }

    fn is_empty(self) -> bool {
        self.0 == 0
    }

    fn union(self, other: Permissions) -> Permissions {
        Permissions(self.0 | other.0)
    }

    fn intersection(self, other: Permissions) -> Permissions {
        Permissions(self.0 & other.0)
    }

    fn without(self, other: Permissions) -> Permissions {
        Permissions(self.0 & !other.0)
    }

    /// Parses a v2 permission suffix (strict `cruds` order, no repeats) or a v1 one.
    fn parse(suffix: &str) -> Result<Permissions, ScopeError> {
        match suffix {
            // SMART v1 -> v2 equivalence (see the module documentation).
            "read" => return Ok(Permissions::of(&[Interaction::Read, Interaction::Search])),
            "write" => return Ok(Permissions::of(&[Interaction::Create, Interaction::Update, Interaction::Delete])),
            "*" => return Ok(Permissions::ALL),
            "" => return Err(ScopeError::MissingPermissions),
            _ => {}
        }
        let mut permissions = Permissions::default();
        let mut last_rank: Option<usize> = None;
        for letter in suffix.chars() {
            let interaction = Interaction::from_letter(letter).ok_or(ScopeError::UnknownPermission)?;
            if permissions.contains(interaction) {
                return Err(ScopeError::RepeatedPermission);
            }
            if last_rank.is_some_and(|last| interaction.rank() < last) {
                return Err(ScopeError::OutOfOrderPermissions);
            }
            last_rank = Some(interaction.rank());
            permissions = permissions.union(Permissions(interaction.bit()));
        }
        Ok(permissions)
    }

    fn of(interactions: &[Interaction]) -> Permissions {
        interactions.iter().fold(Permissions::default(), |acc, i| acc.union(Permissions(i.bit())))
    }
}

impl fmt::Display for Permissions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for interaction in Interaction::ALL {
            if self.contains(interaction) {
                write!(f, "{}", interaction.letter())?;
            }
        }
        Ok(())
    }
}

/// What a scope applies to: every resource type (`*`) or one. `AllTypes` sorts first, so it is
/// rendered first.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Target {
    AllTypes,
    Type(String),
}

impl Target {
    const MAX_TYPE_LEN: usize = 64;

    /// FHIR resource type names are `[A-Z][A-Za-z]*` (R4 "Resource.resourceType"). Only the
    /// shape is checked: a type the server does not serve simply never matches a request.
    fn parse(value: &str) -> Result<Target, ScopeError> {
        if value == "*" {
            return Ok(Target::AllTypes);
        }
        let mut chars = value.chars();
        let shape_ok = value.len() <= Self::MAX_TYPE_LEN
            && chars.next().is_some_and(|c| c.is_ascii_uppercase())
            && chars.all(|c| c.is_ascii_alphabetic());
        if !shape_ok {
            return Err(ScopeError::InvalidResourceType);
        }
        Ok(Target::Type(value.to_owned()))
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::AllTypes => f.write_str("*"),
            Target::Type(name) => f.write_str(name),
        }
    }
}

/// A normalised set of SMART system scopes.
///
/// Invariants: every entry has at least one permission; a per-type entry never repeats a
/// permission that the `*` entry already grants. Two sets that grant the same thing are equal
/// and render to the same string (`*` first, then types in alphabetical order, letters in
/// `cruds` order).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ScopeSet {
    entries: BTreeMap<Target, Permissions>,
}

impl ScopeSet {
    /// Upper bound on the scope string, to keep parsing of attacker-supplied input cheap.
    pub const MAX_LEN: usize = 4096;
    pub const MAX_SCOPES: usize = 128;
    const PREFIX: &'static str = "system/";

    /// The empty set: grants nothing.
    pub fn empty() -> Self {
        Self::default()
    }

    /// Parses a space-separated scope string in which every scope must be a supported system
    /// scope (RFC 6749 section 3.3 syntax). Used for the token request and for our own tokens.
    pub fn parse(scope: &str) -> Result<Self, ScopeError> {
        let tokens = Self::tokens(scope)?;
        if tokens.is_empty() {
            return Err(ScopeError::Empty);
        }
        let mut set = Self::empty();
        for token in tokens {
            let (target, permissions) = Self::parse_one(token)?;
            set.add(target, permissions);
        }
        Ok(set)
    }

    /// Parses the scope claim of a token from an external issuer, keeping only the supported
    /// system scopes. Skipping (not failing on) `openid`, `profile` and the like is safe: a
    /// skipped scope grants nothing here.
    pub fn parse_lenient(scope: &str) -> Self {
        let mut set = Self::empty();
        for token in Self::tokens(scope).unwrap_or_default() {
            if let Ok((target, permissions)) = Self::parse_one(token) {
                set.add(target, permissions);
            }
        }
        set
    }

    /// Narrows a requested scope string to what the client is registered for: the result is the
    /// intersection, never wider than either side. `system/*.rs` registered covers
    /// `system/Task.r` requested; `system/*.r` requested against `system/Task.rs` registered
    /// yields `system/Task.r`. A request of which nothing survives is `NothingGranted`
    /// (the token endpoint answers `invalid_scope`).
    pub fn grant(requested: &str, registered: &ScopeSet) -> Result<Self, ScopeError> {
        let granted = Self::parse(requested)?.narrow_to(registered);
        if granted.is_empty() {
            return Err(ScopeError::NothingGranted);
        }
        Ok(granted)
    }

    /// The intersection of `self` and `limit`.
    pub fn narrow_to(&self, limit: &ScopeSet) -> Self {
        let mut narrowed = Self::empty();
        let limit_all = limit.wildcard();
        for (target, wanted) in self.effective_entries() {
            match target {
                Target::Type(_) => {
                    let allowed = limit_all.union(limit.for_target(target));
                    narrowed.add(target.clone(), wanted.intersection(allowed));
                }
                Target::AllTypes => {
                    // `*` in the request meets `*` in the limit, and each type the limit names.
                    narrowed.add(Target::AllTypes, wanted.intersection(limit_all));
                    for (limit_target, limit_perms) in &limit.entries {
                        if let Target::Type(_) = limit_target {
                            narrowed.add(limit_target.clone(), wanted.intersection(*limit_perms));
                        }
                    }
                }
            }
        }
        narrowed
    }

    /// Whether the set permits `interaction` on `resource_type` (`*` covers every type).
    pub fn allows(&self, resource_type: &str, interaction: Interaction) -> bool {
        let specific = self
            .entries
            .iter()
            .find(|(target, _)| matches!(target, Target::Type(name) if name == resource_type))
            .map(|(_, perms)| *perms)
            .unwrap_or_default();
        self.wildcard().union(specific).contains(interaction)
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether every permission in `self` is also in `other`.
    pub fn is_subset_of(&self, other: &ScopeSet) -> bool {
        self.narrow_to(other) == *self
    }

    /// The space-separated v2 rendering (also available through `Display`).
    pub fn render(&self) -> String {
        self.to_string()
    }

    /// The individual scopes, rendered, in rendering order (for `scopes_supported`).
    pub fn scopes(&self) -> Vec<String> {
        self.entries.iter().map(|(target, perms)| format!("{}{target}.{perms}", Self::PREFIX)).collect()
    }

    fn tokens(scope: &str) -> Result<Vec<&str>, ScopeError> {
        if scope.len() > Self::MAX_LEN {
            return Err(Self::too_long());
        }
        // RFC 6749 section 3.3: scope tokens are separated by spaces; runs of spaces are
        // tolerated because they are harmless.
        let tokens: Vec<&str> = scope.split(' ').filter(|t| !t.is_empty()).collect();
        if tokens.len() > Self::MAX_SCOPES {
            return Err(Self::too_long());
        }
        Ok(tokens)
    }

    fn too_long() -> ScopeError {
        ScopeError::TooLong { max: Self::MAX_LEN, max_scopes: Self::MAX_SCOPES }
    }

    fn parse_one(token: &str) -> Result<(Target, Permissions), ScopeError> {
        // RFC 6749 section 3.3 NQCHAR: %x21 / %x23-5B / %x5D-7E.
        let nqchar = |b: u8| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b);
        if !token.bytes().all(nqchar) {
            return Err(ScopeError::Malformed);
        }
        let rest = token.strip_prefix(Self::PREFIX).ok_or(ScopeError::NotSystemContext)?;
        if rest.contains('?') {
            return Err(ScopeError::GranularNotSupported);
        }
        let (target, suffix) = rest.split_once('.').ok_or(ScopeError::Malformed)?;
        if suffix.contains('.') {
            return Err(ScopeError::Malformed);
        }
        Ok((Target::parse(target)?, Permissions::parse(suffix)?))
    }

    fn wildcard(&self) -> Permissions {
        self.for_target(&Target::AllTypes)
    }

    fn for_target(&self, target: &Target) -> Permissions {
        self.entries.get(target).copied().unwrap_or_default()
    }

    /// Entries with the permissions each one grants in full (a type's own plus `*`'s).
    fn effective_entries(&self) -> impl Iterator<Item = (&Target, Permissions)> {
        let all = self.wildcard();
        self.entries.iter().map(move |(target, perms)| match target {
            Target::AllTypes => (target, *perms),
            Target::Type(_) => (target, perms.union(all)),
        })
    }

    /// Adds permissions, keeping the invariants (no empty entries, nothing `*` already grants).
    fn add(&mut self, target: Target, permissions: Permissions) {
        if permissions.is_empty() {
            return;
        }
        match target {
            Target::AllTypes => {
                let all = self.wildcard().union(permissions);
                self.entries.insert(Target::AllTypes, all);
                self.entries.retain(|t, perms| {
                    if let Target::Type(_) = t {
                        *perms = perms.without(all);
                    }
                    !perms.is_empty()
                });
            }
            Target::Type(_) => {
                let merged = self.for_target(&target).union(permissions).without(self.wildcard());
                if !merged.is_empty() {
                    self.entries.insert(target, merged);
                }
            }
        }
    }
}

impl fmt::Display for ScopeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.scopes().join(" "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(scope: &str) -> ScopeSet {
        ScopeSet::parse(scope).unwrap_or_else(|e| panic!("{scope:?} should parse: {e}"))
    }

    #[test]
    fn valid_scopes_parse_and_render_in_normal_form() {
        let cases: &[(&str, &str)] = &[
            ("system/Task.r", "system/Task.r"),
            ("system/Task.cruds", "system/Task.cruds"),
            ("system/Task.rs system/ServiceRequest.cr", "system/ServiceRequest.cr system/Task.rs"),
            ("system/Task.r system/Task.s", "system/Task.rs"),
            ("system/*.rs system/Task.cr", "system/*.rs system/Task.c"),
            ("system/Task.r system/*.r", "system/*.r"),
            ("  system/Task.r   system/CarePlan.s ", "system/CarePlan.s system/Task.r"),
            // SMART v1 mapping: read = rs, write = cud, * = cruds.
            ("system/Task.read", "system/Task.rs"),
            ("system/Task.write", "system/Task.cud"),
            ("system/Task.*", "system/Task.cruds"),
            ("system/*.read", "system/*.rs"),
            ("system/*.*", "system/*.cruds"),
        ];
        for (input, rendered) in cases {
            assert_eq!(parse(input).render(), *rendered, "rendering of {input:?}");
        }
    }

    #[test]
    fn invalid_scopes_are_rejected_with_a_specific_error() {
        let long = "system/Task.r ".repeat(ScopeSet::MAX_SCOPES + 1);
        let cases: &[(&str, ScopeError)] = &[
            ("", ScopeError::Empty),
            ("   ", ScopeError::Empty),
            ("system/Task.sr", ScopeError::OutOfOrderPermissions),
            ("system/Task.dc", ScopeError::OutOfOrderPermissions),
            ("system/Task.rr", ScopeError::RepeatedPermission),
            ("system/Task.rsr", ScopeError::RepeatedPermission),
            ("system/Task.rx", ScopeError::UnknownPermission),
            ("system/Task.R", ScopeError::UnknownPermission),
            ("system/Task.", ScopeError::MissingPermissions),
            ("system/Task", ScopeError::Malformed),
            ("system/Task.r.s", ScopeError::Malformed),
            ("system/task.r", ScopeError::InvalidResourceType),
            ("system/Task1.r", ScopeError::InvalidResourceType),
            ("system/.r", ScopeError::InvalidResourceType),
            ("patient/Task.r", ScopeError::NotSystemContext),
            ("user/*.cruds", ScopeError::NotSystemContext),
            ("openid", ScopeError::NotSystemContext),
            ("system/Task.r launch", ScopeError::NotSystemContext),
            ("system/Observation.rs?category=vital-signs", ScopeError::GranularNotSupported),
            ("system/Task.r\tsystem/Task.s", ScopeError::Malformed),
            ("system/Ta\"sk.r", ScopeError::Malformed),
            (long.as_str(), ScopeError::TooLong { max: ScopeSet::MAX_LEN, max_scopes: ScopeSet::MAX_SCOPES }),
        ];
        for (input, expected) in cases {
            assert_eq!(ScopeSet::parse(input).as_ref(), Err(expected), "scope {input:?}");
        }
    }

    #[test]
    fn allows_checks_each_interaction_against_type_and_wildcard() {
        let set = parse("system/Task.rs system/*.r system/ServiceRequest.c");
        let cases: &[(&str, Interaction, bool)] = &[
            ("Task", Interaction::Read, true),
            ("Task", Interaction::Search, true),
            ("Task", Interaction::Update, false),
            ("Task", Interaction::Create, false),
            ("ServiceRequest", Interaction::Create, true),
            ("ServiceRequest", Interaction::Read, true),
            ("ServiceRequest", Interaction::Search, false),
            ("CarePlan", Interaction::Read, true),
            ("CarePlan", Interaction::Delete, false),
            ("*", Interaction::Read, true),
        ];
        for (resource_type, interaction, expected) in cases {
            assert_eq!(set.allows(resource_type, *interaction), *expected, "{resource_type} {interaction:?}");
        }
        assert!(!ScopeSet::empty().allows("Task", Interaction::Read), "the empty set allows nothing");
    }

    #[test]
    fn granting_narrows_to_the_registration_and_never_widens() {
        let cases: &[(&str, &str, Result<&str, ScopeError>)] = &[
            // (requested, registered, granted)
            ("system/Task.cruds", "system/Task.rs", Ok("system/Task.rs")),
            ("system/Task.rs", "system/*.cruds", Ok("system/Task.rs")),
            ("system/*.rs", "system/Task.r system/CarePlan.rs", Ok("system/CarePlan.rs system/Task.r")),
            ("system/*.cruds", "system/*.rs", Ok("system/*.rs")),
            ("system/Task.r system/Patient.r", "system/Task.rs", Ok("system/Task.r")),
            ("system/Task.read", "system/Task.r", Ok("system/Task.r")),
            ("system/Task.rs", "system/*.r system/Task.s", Ok("system/Task.rs")),
            ("system/Patient.r", "system/Task.rs", Err(ScopeError::NothingGranted)),
            ("system/Task.c", "system/Task.rs", Err(ScopeError::NothingGranted)),
            ("system/Task.rs", "", Err(ScopeError::NothingGranted)),
            ("system/Task.sr", "system/*.cruds", Err(ScopeError::OutOfOrderPermissions)),
        ];
        for (requested, registered, expected) in cases {
            let registered_set = ScopeSet::parse_lenient(registered);
            let granted = ScopeSet::grant(requested, &registered_set).map(|s| s.render());
            assert_eq!(
                granted.as_deref(),
                expected.as_ref().map(|s| *s),
                "requested {requested:?} against registered {registered:?}"
            );
            if let Ok(set) = ScopeSet::grant(requested, &registered_set) {
                assert!(set.is_subset_of(&registered_set), "grant of {requested:?} is within the registration");
            }
        }
    }

    #[test]
    fn lenient_parsing_keeps_only_supported_system_scopes() {
        let set = ScopeSet::parse_lenient("openid profile system/Task.rs patient/*.r system/Task.sr");
        assert_eq!(set.render(), "system/Task.rs", "only the valid system scope survives");
        assert!(ScopeSet::parse_lenient("").is_empty(), "an empty claim grants nothing");
    }

    #[test]
    fn scopes_lists_each_entry_for_smart_configuration() {
        assert_eq!(
            parse("system/Task.rs system/ServiceRequest.cr").scopes(),
            vec!["system/ServiceRequest.cr".to_owned(), "system/Task.rs".to_owned()],
            "one string per entry"
        );
    }
}
