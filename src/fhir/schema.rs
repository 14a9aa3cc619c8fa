//! The shape of the generated element table (`element_types`) and lookups into it.

use super::element_types::TYPES;

/// The FHIR R4 primitive types (R4 section 2.24.0.1 "Primitive Types").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Primitive {
    Base64Binary,
    Boolean,
    Canonical,
    Code,
    Date,
    DateTime,
    Decimal,
    Id,
    Instant,
    Integer,
    Markdown,
    Oid,
    PositiveInt,
    String,
    Time,
    UnsignedInt,
    Uri,
    Url,
    Uuid,
    Xhtml,
}

impl Primitive {
    /// The type's name as the specification writes it, for messages.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Base64Binary => "base64Binary",
            Self::Boolean => "boolean",
            Self::Canonical => "canonical",
            Self::Code => "code",
            Self::Date => "date",
            Self::DateTime => "dateTime",
            Self::Decimal => "decimal",
            Self::Id => "id",
            Self::Instant => "instant",
            Self::Integer => "integer",
            Self::Markdown => "markdown",
            Self::Oid => "oid",
            Self::PositiveInt => "positiveInt",
            Self::String => "string",
            Self::Time => "time",
            Self::UnsignedInt => "unsignedInt",
            Self::Uri => "uri",
            Self::Url => "url",
            Self::Uuid => "uuid",
            Self::Xhtml => "xhtml",
        }
    }

    /// The suffix of a choice element of this type (`valueDateTime`).
    fn choice_suffix(self) -> &'static str {
        match self {
            Self::Base64Binary => "Base64Binary",
            Self::Boolean => "Boolean",
            Self::Canonical => "Canonical",
            Self::Code => "Code",
            Self::Date => "Date",
            Self::DateTime => "DateTime",
            Self::Decimal => "Decimal",
            Self::Id => "Id",
            Self::Instant => "Instant",
            Self::Integer => "Integer",
            Self::Markdown => "Markdown",
            Self::Oid => "Oid",
            Self::PositiveInt => "PositiveInt",
            Self::String => "String",
            Self::Time => "Time",
            Self::UnsignedInt => "UnsignedInt",
            Self::Uri => "Uri",
            Self::Url => "Url",
            Self::Uuid => "Uuid",
            Self::Xhtml => "Xhtml",
        }
    }
}

/// What one element holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ElementType {
    Primitive(Primitive),
    /// A datatype or backbone element: its key in the table (`Identifier`, `Task.input`).
    Complex(&'static str),
    /// A whole resource (`contained`, `Bundle.entry.resource`): its own `resourceType` says
    /// which.
    Resource,
}

impl ElementType {
    /// The suffix of a choice element of this type (`valueDateTime`, `valueReference`).
    fn choice_suffix(self) -> &'static str {
        match self {
            Self::Primitive(primitive) => primitive.choice_suffix(),
            Self::Complex(name) => name,
            Self::Resource => "Resource",
        }
    }
}

/// A required binding (R4 section 4.1 "Using Codes in Resources": the code SHALL be from
/// the value set), expanded.
#[derive(Debug)]
pub(crate) struct Binding {
    pub(crate) value_set: &'static str,
    /// `(system, code)` pairs of the expansion.
    pub(crate) concepts: &'static [(&'static str, &'static str)],
}

impl Binding {
    pub(crate) fn contains(&self, code: &str) -> bool {
        self.concepts.iter().any(|(_, candidate)| *candidate == code)
    }
}

/// One element definition of a type.
#[derive(Debug)]
pub(crate) struct Element {
    /// JSON name; for a choice element the base name (`value` of `value[x]`).
    pub(crate) name: &'static str,
    pub(crate) choice: bool,
    pub(crate) types: &'static [ElementType],
    /// Maximum cardinality above 1: a JSON array.
    pub(crate) repeats: bool,
    pub(crate) min: u32,
    pub(crate) binding: Option<&'static Binding>,
}

/// The elements of a type key, if linkbridge's table has it.
pub(crate) fn elements_of(type_key: &str) -> Option<&'static [Element]> {
    TYPES.binary_search_by(|(key, _)| (*key).cmp(type_key)).ok().map(|index| TYPES[index].1)
}

/// The element a JSON key of `type_key` stands for, and its type (resolving
/// `valueDateTime` to the `value[x]` element with type dateTime; R4 section 2.24.0.1
/// "Choice of Data Types").
pub(crate) fn element_for(type_key: &str, json_key: &str) -> Option<(&'static Element, ElementType)> {
    let elements = elements_of(type_key)?;
    elements.iter().find_map(|element| {
        if !element.choice {
            return (element.name == json_key).then(|| element.types.first().map(|ty| (element, *ty))).flatten();
        }
        let suffix = json_key.strip_prefix(element.name)?;
        element.types.iter().find(|ty| ty.choice_suffix() == suffix).map(|ty| (element, *ty))
    })
}
