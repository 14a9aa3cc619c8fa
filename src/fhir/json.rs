//! Reading JSON request bodies strictly: an object that names one key twice is refused.
//! serde_json keeps the last of them silently, so `{"status": "completed", ..., "status":
//! "requested"}` would be read as one of two meanings its sender may not have intended, and a
//! system in front of linkbridge reading the first would disagree with it (RFC 8259 4: names
//! SHOULD be unique; FHIR JSON allows no duplicates). Nesting is limited as serde_json limits
//! it (128 levels), which the visitor below inherits from its deserializer.

use serde::de::{DeserializeSeed, Error as _, MapAccess, SeqAccess, Visitor};
use serde::Deserializer;
use serde_json::map::Entry;
use serde_json::{Map, Value};

/// The key serde_json's `arbitrary_precision` feature carries a number's digits under.
const ARBITRARY_PRECISION_NUMBER: &str = "$serde_json::private::Number";

/// Parses `bytes` as one JSON value, refusing an object with a repeated key (the error names
/// the key, with serde_json's line and column).
pub fn from_slice_strict(bytes: &[u8]) -> Result<Value, serde_json::Error> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = StrictValue.deserialize(&mut deserializer)?;
    deserializer.end()?;
    Ok(value)
}

/// Deserializes one value as `serde_json::Value` does, but checks every object's keys.
#[derive(Clone, Copy)]
struct StrictValue;

impl<'de> DeserializeSeed<'de> for StrictValue {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for StrictValue {
    type Value = Value;

    fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
        formatter.write_str("any JSON value")
    }

    fn visit_bool<E>(self, value: bool) -> Result<Value, E> {
        Ok(Value::Bool(value))
    }

    fn visit_i64<E>(self, value: i64) -> Result<Value, E> {
        Ok(Value::Number(value.into()))
    }

    fn visit_u64<E>(self, value: u64) -> Result<Value, E> {
        Ok(Value::Number(value.into()))
    }

    fn visit_f64<E>(self, value: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(value).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, value: &str) -> Result<Value, E> {
        Ok(Value::String(value.to_owned()))
    }

    fn visit_string<E>(self, value: String) -> Result<Value, E> {
        Ok(Value::String(value))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut items: A) -> Result<Value, A::Error> {
        let mut array = Vec::with_capacity(items.size_hint().unwrap_or(0).min(4096));
        while let Some(item) = items.next_element_seed(StrictValue)? {
            array.push(item);
        }
        Ok(Value::Array(array))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut members: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = members.next_key::<String>()? {
            // serde_json's arbitrary precision (on in this build: FHIR decimals keep their
            // digits) hands a number over as a map of this one key and its digits.
            if key == ARBITRARY_PRECISION_NUMBER && object.is_empty() {
                let digits: String = members.next_value()?;
                return digits.parse::<serde_json::Number>().map(Value::Number).map_err(A::Error::custom);
            }
            let value = members.next_value_seed(StrictValue)?;
            match object.entry(key) {
                Entry::Occupied(first) => {
                    return Err(A::Error::custom(format!("the key \"{}\" appears twice in one object", first.key())));
                }
                Entry::Vacant(slot) => {
                    slot.insert(value);
                }
            }
        }
        Ok(Value::Object(object))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_key_at_any_depth_is_refused_naming_the_key() {
        let nested = br#"{"resourceType": "Patient", "name": [{"family": "A", "family": "B"}]}"#;
        let refused = from_slice_strict(nested).expect_err("refused");
        assert!(refused.to_string().contains("\"family\" appears twice"), "{refused}");
        let top = br#"{"gender": "male", "gender": "female"}"#;
        assert!(from_slice_strict(top).expect_err("refused").to_string().contains("\"gender\""));
    }

    #[test]
    fn anything_else_reads_exactly_as_serde_json_reads_it() {
        let text =
            br#"{"a": [1, -2, 3.5, 18446744073709551615, 1e400, null, true, "x\u00e9"], "b": {"c": {}}, "d": []}"#;
        let strict = from_slice_strict(text);
        let plain: Result<Value, _> = serde_json::from_slice(text);
        assert_eq!(strict.is_ok(), plain.is_ok());
        let small = br#"{"a": [1, -2, 3.5, 0.10, 1.000000000000000000001, 18446744073709551615, null, true, "x\u00e9"], "b": {"c": {}}, "d": []}"#;
        assert_eq!(from_slice_strict(small).expect("strict"), serde_json::from_slice::<Value>(small).expect("plain"));
        assert!(from_slice_strict(b"{} trailing").is_err());
        let deep = "[".repeat(200) + &"]".repeat(200);
        assert!(from_slice_strict(deep.as_bytes()).is_err(), "the nesting limit holds");
        assert!(serde_json::from_slice::<Value>(deep.as_bytes()).is_err());
    }
}
