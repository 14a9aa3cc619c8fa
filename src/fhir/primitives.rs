//! The lexical rules of FHIR R4 primitive types in JSON.
//!
//! Sources: R4 section 2.24.0.1 "Primitive Types" (the regular expressions and ranges) and
//! section 2.6.2 "JSON Representation of Resources" (which JSON type carries each
//! primitive; no empty strings). Messages do not repeat the offending value: it may be
//! personal data (a birth date, a name) and messages end up in OperationOutcomes and logs.

use serde_json::Value;

use super::schema::Primitive;

/// FHIR integers are 32-bit signed (R4 2.24.0.1 integer, unsignedInt, positiveInt).
const INTEGER_MAX: i64 = i32::MAX as i64;
const INTEGER_MIN: i64 = i32::MIN as i64;

/// "Strings SHALL NOT exceed 1MB in size" (R4 2.24.0.1 string).
const STRING_MAX_BYTES: usize = 1024 * 1024;

/// Why `value` is not a valid JSON value of `primitive`, if it is not.
pub(crate) fn primitive_problem(primitive: Primitive, value: &Value) -> Option<String> {
    match primitive {
        Primitive::Boolean => {
            (!value.is_boolean()).then(|| "a boolean must be the JSON literal true or false".to_owned())
        }
        Primitive::Integer => integer_problem(primitive, value, INTEGER_MIN),
        Primitive::UnsignedInt => integer_problem(primitive, value, 0),
        Primitive::PositiveInt => integer_problem(primitive, value, 1),
        // serde_json has already parsed the number; any JSON number is a valid decimal.
        Primitive::Decimal => (!value.is_number()).then(|| "a decimal must be a JSON number".to_owned()),
        _ => match value {
            Value::String(text) => {
                text_problem(primitive, text).map(|reason| format!("invalid {}: {reason}", primitive.name()))
            }
            _ => Some(format!("a {} must be a JSON string", primitive.name())),
        },
    }
}

fn integer_problem(primitive: Primitive, value: &Value, min: i64) -> Option<String> {
    let name = primitive.name();
    let Value::Number(number) = value else {
        return Some(format!("an {name} must be a JSON number"));
    };
    let in_range = |integer: i64| (min..=INTEGER_MAX).contains(&integer);
    match number.as_i64() {
        Some(integer) if in_range(integer) => None,
        Some(_) => Some(format!("{name} out of range {min} to {INTEGER_MAX}")),
        None if number.is_u64() => Some(format!("{name} out of range {min} to {INTEGER_MAX}")),
        // 1.0 and 1e3 are decimals in JSON: the integer regex is -?([0]|([1-9][0-9]*)).
        None => Some(format!("an {name} must be a whole number without fraction or exponent")),
    }
}

/// Why `text` does not match the rules of a string-based primitive.
fn text_problem(primitive: Primitive, text: &str) -> Option<String> {
    // R4 2.6.2: "string property values can never be empty".
    if text.is_empty() {
        return Some("empty strings are not allowed".to_owned());
    }
    match primitive {
        Primitive::String | Primitive::Markdown => string_problem(text),
        Primitive::Code => code_problem(text),
        Primitive::Id => id_problem(text),
        Primitive::Uri | Primitive::Url | Primitive::Canonical => uri_problem(text),
        Primitive::Oid => oid_problem(text),
        Primitive::Uuid => uuid_problem(text),
        Primitive::Base64Binary => base64_problem(text),
        Primitive::Date => date_problem(text),
        Primitive::DateTime => date_time_problem(text),
        Primitive::Instant => instant_problem(text),
        Primitive::Time => time_problem(text).err(),
        Primitive::Xhtml => xhtml_problem(text),
        // Carried as JSON numbers and booleans, never reached.
        Primitive::Boolean
        | Primitive::Integer
        | Primitive::UnsignedInt
        | Primitive::PositiveInt
        | Primitive::Decimal => None,
    }
}

/// Whether R4's string regex `[ \r\n\t\S]+` excludes `c`: a control character other than tab,
/// CR and LF.
pub fn excluded_from_strings(c: char) -> bool {
    c.is_control() && !matches!(c, '\t' | '\r' | '\n')
}

/// string: regex `[ \r\n\t\S]+`, i.e. no control characters other than tab, CR and LF.
fn string_problem(text: &str) -> Option<String> {
    if text.len() > STRING_MAX_BYTES {
        return Some("longer than 1 MB".to_owned());
    }
    text.chars().any(excluded_from_strings).then(|| "contains a control character other than tab, CR or LF".to_owned())
}

/// code: regex `[^\s]+(\s[^\s]+)*`: no leading, trailing or repeated whitespace.
fn code_problem(text: &str) -> Option<String> {
    let starts_or_ends_blank = text.starts_with(char::is_whitespace) || text.ends_with(char::is_whitespace);
    let mut previous_blank = false;
    let mut repeated_blank = false;
    for c in text.chars() {
        let blank = c.is_whitespace();
        repeated_blank |= blank && previous_blank;
        previous_blank = blank;
    }
    (starts_or_ends_blank || repeated_blank)
        .then(|| "a code has no leading, trailing or repeated whitespace".to_owned())
}

/// id: regex `[A-Za-z0-9\-\.]{1,64}`.
fn id_problem(text: &str) -> Option<String> {
    if text.len() > 64 {
        return Some("longer than 64 characters".to_owned());
    }
    (!text.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.'))
        .then(|| "only letters, digits, '-' and '.' are allowed".to_owned())
}

/// uri, url, canonical: regex `\S*` (no whitespace).
fn uri_problem(text: &str) -> Option<String> {
    text.contains(char::is_whitespace).then(|| "whitespace is not allowed".to_owned())
}

/// oid: regex `urn:oid:[0-2](\.(0|[1-9][0-9]*))+`.
fn oid_problem(text: &str) -> Option<String> {
    let expected = || Some("expected urn:oid: followed by dotted numbers, e.g. urn:oid:1.2.3".into());
    let Some(arcs) = text.strip_prefix("urn:oid:") else {
        return expected();
    };
    let mut parts = arcs.split('.');
    let first_ok = matches!(parts.next(), Some("0" | "1" | "2"));
    let rest: Vec<&str> = parts.collect();
    let rest_ok = !rest.is_empty()
        && rest.iter().all(|arc| {
            !arc.is_empty() && arc.bytes().all(|b| b.is_ascii_digit()) && (*arc == "0" || !arc.starts_with('0'))
        });
    if first_ok && rest_ok {
        None
    } else {
        expected()
    }
}

/// uuid: regex `urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}`.
fn uuid_problem(text: &str) -> Option<String> {
    let ok = text.strip_prefix("urn:uuid:").is_some_and(|uuid| {
        let groups: Vec<&str> = uuid.split('-').collect();
        groups.len() == 5
            && groups.iter().zip([8, 4, 4, 4, 12]).all(|(group, length)| {
                group.len() == length && group.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            })
    });
    (!ok).then(|| "expected urn:uuid: and a lower-case UUID".to_owned())
}

/// base64Binary: regex `(\s*([0-9a-zA-Z\+/=]){4}\s*)+` (RFC 4648 with optional whitespace).
fn base64_problem(text: &str) -> Option<String> {
    let symbols: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    let alphabet = |b: &u8| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/';
    let data_len = symbols.iter().take_while(|b| alphabet(b)).count();
    let padding = &symbols[data_len..];
    let ok = !symbols.is_empty() && symbols.len() % 4 == 0 && padding.len() <= 2 && padding.iter().all(|b| *b == b'=');
    (!ok).then(|| "not base64: groups of four characters from A-Z a-z 0-9 + / with = padding".into())
}

/// xhtml: the narrative is a single `div` element (R4 2.25.0 Narrative, txt-1/txt-2).
fn xhtml_problem(text: &str) -> Option<String> {
    (!text.trim_start().starts_with("<div")).then(|| "the narrative must be an XHTML <div> element".to_owned())
}

/// date: `YYYY`, `YYYY-MM` or `YYYY-MM-DD`, a real calendar date.
fn date_problem(text: &str) -> Option<String> {
    parse_date(text).err()
}

/// dateTime: a date as above, or a full date with `Thh:mm:ss(.sss)` and a time zone:
/// "If hours and minutes are specified, a time zone SHALL be populated".
fn date_time_problem(text: &str) -> Option<String> {
    match text.split_once('T') {
        None => parse_date(text).err(),
        Some((date, time)) => match parse_date(date) {
            Err(reason) => Some(reason),
            Ok(DatePrecision::Day) => parse_time_with_zone(time).err(),
            Ok(_) => Some("a time needs a full date (YYYY-MM-DD) before the T".to_owned()),
        },
    }
}

/// instant: `YYYY-MM-DDThh:mm:ss(.sss)` and a time zone, always complete.
fn instant_problem(text: &str) -> Option<String> {
    let Some((date, time)) = text.split_once('T') else {
        return Some("an instant needs date, time and time zone: YYYY-MM-DDThh:mm:ss+zz:zz".into());
    };
    match parse_date(date) {
        Ok(DatePrecision::Day) => parse_time_with_zone(time).err(),
        Ok(_) => Some("an instant needs a full date (YYYY-MM-DD)".to_owned()),
        Err(reason) => Some(reason),
    }
}

#[derive(Debug, PartialEq)]
enum DatePrecision {
    Year,
    Month,
    Day,
}

fn parse_date(text: &str) -> Result<DatePrecision, String> {
    let shape = || "expected YYYY, YYYY-MM or YYYY-MM-DD".to_owned();
    let mut parts = text.split('-');
    let year = parts.next().and_then(|part| digits(part, 4)).ok_or_else(shape)?;
    // The R4 regex excludes year 0000.
    if year == 0 {
        return Err("year 0000 does not exist".to_owned());
    }
    let Some(month) = parts.next() else {
        return Ok(DatePrecision::Year);
    };
    let month = digits(month, 2).ok_or_else(shape)?;
    if !(1..=12).contains(&month) {
        return Err("month must be 01 to 12".to_owned());
    }
    let Some(day) = parts.next() else {
        return Ok(DatePrecision::Month);
    };
    let day = digits(day, 2).ok_or_else(shape)?;
    if parts.next().is_some() {
        return Err(shape());
    }
    if day == 0 || day > days_in_month(year, month) {
        return Err("that day does not exist in that month".to_owned());
    }
    Ok(DatePrecision::Day)
}

fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// `hh:mm:ss(.s+)` then `Z` or `(+|-)hh:mm` up to +14:00 (R4 dateTime/instant regex).
fn parse_time_with_zone(text: &str) -> Result<(), String> {
    let zone_at =
        text.find(['Z', '+', '-']).ok_or_else(|| "a time needs a time zone (Z or +hh:mm / -hh:mm)".to_owned())?;
    let (time, zone) = text.split_at(zone_at);
    time_problem(time)?;
    if zone == "Z" {
        return Ok(());
    }
    let bad_zone = || "time zone must be Z or +hh:mm / -hh:mm between -14:00 and +14:00".to_owned();
    let offset = &zone[1..];
    let (hours, minutes) = offset.split_once(':').ok_or_else(bad_zone)?;
    let hours = digits(hours, 2).ok_or_else(bad_zone)?;
    let minutes = digits(minutes, 2).ok_or_else(bad_zone)?;
    if minutes > 59 || hours > 14 || (hours == 14 && minutes != 0) {
        return Err(bad_zone());
    }
    Ok(())
}

/// time: regex `([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]+)?` (60: leap second).
fn time_problem(text: &str) -> Result<(), String> {
    let shape = || "expected a time hh:mm:ss with optional fraction".to_owned();
    let (clock, fraction) = match text.split_once('.') {
        Some((clock, fraction)) => (clock, Some(fraction)),
        None => (text, None),
    };
    if fraction.is_some_and(|f| f.is_empty() || !f.bytes().all(|b| b.is_ascii_digit())) {
        return Err(shape());
    }
    let parts: Vec<&str> = clock.split(':').collect();
    let [hours, minutes, seconds] = parts.as_slice() else {
        return Err(shape());
    };
    let hours = digits(hours, 2).ok_or_else(shape)?;
    let minutes = digits(minutes, 2).ok_or_else(shape)?;
    let seconds = digits(seconds, 2).ok_or_else(shape)?;
    if hours > 23 || minutes > 59 || seconds > 60 {
        return Err("time out of range (00:00:00 to 23:59:60)".to_owned());
    }
    Ok(())
}

/// The value of exactly `count` ASCII digits.
fn digits(text: &str, count: usize) -> Option<u32> {
    (text.len() == count && text.bytes().all(|b| b.is_ascii_digit())).then(|| text.parse().ok()).flatten()
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::super::schema::Primitive::{self, *};
    use super::primitive_problem;

    fn check(primitive: Primitive, cases: &[(Value, bool)]) {
        for (value, valid) in cases {
            let problem = primitive_problem(primitive, value);
            assert_eq!(
                problem.is_none(),
                *valid,
                "{value} as {}: expected {}, got {problem:?}",
                primitive.name(),
                if *valid { "valid" } else { "a problem" },
            );
        }
    }

    #[test]
    fn booleans_are_json_literals_only() {
        check(Boolean, &[(json!(true), true), (json!(false), true), (json!("true"), false), (json!(1), false)]);
    }

    #[test]
    fn integers_are_whole_json_numbers_in_32_bit_range() {
        check(
            Integer,
            &[
                (json!(0), true),
                (json!(-2147483648_i64), true),
                (json!(2147483647), true),
                (json!(2147483648_i64), false),
                (json!(-2147483649_i64), false),
                (json!(1.5), false),
                (json!(1.0), false),
                (json!("1"), false),
            ],
        );
        check(UnsignedInt, &[(json!(0), true), (json!(7), true), (json!(-1), false), (json!(u64::MAX), false)]);
        check(PositiveInt, &[(json!(1), true), (json!(2147483647), true), (json!(0), false), (json!(-3), false)]);
    }

    #[test]
    fn decimals_are_json_numbers() {
        check(Decimal, &[(json!(0), true), (json!(-1.25), true), (json!(1e10), true), (json!("1.5"), false)]);
    }

    #[test]
    fn strings_are_non_empty_without_control_characters() {
        check(
            String,
            &[
                (json!("hello"), true),
                (json!("line one\nline two\ttabbed\r"), true),
                (json!("ünïcödé"), true),
                (json!(""), false),
                (json!("bell\u{7}"), false),
                (json!("nul\u{0}"), false),
                (json!(12), false),
            ],
        );
        check(Markdown, &[(json!("**bold**\n\n- item"), true), (json!(""), false), (json!("esc\u{1b}"), false)]);
        check(String, &[(Value::String("x".repeat(1024 * 1024 + 1)), false)]);
    }

    #[test]
    fn codes_have_no_leading_trailing_or_repeated_whitespace() {
        check(
            Code,
            &[
                (json!("in-progress"), true),
                (json!("two words"), true),
                (json!(" lead"), false),
                (json!("trail "), false),
                (json!("two  spaces"), false),
                (json!(""), false),
            ],
        );
    }

    #[test]
    fn ids_are_up_to_64_letters_digits_dashes_and_dots() {
        check(
            Id,
            &[
                (json!("a-B.9"), true),
                (json!("x".repeat(64)), true),
                (json!("x".repeat(65)), false),
                (json!("under_score"), false),
                (json!("sp ace"), false),
                (json!(""), false),
            ],
        );
    }

    #[test]
    fn uris_urls_and_canonicals_have_no_whitespace() {
        for primitive in [Uri, Url, Canonical] {
            check(
                primitive,
                &[
                    (json!("https://example.org/fhir/x|1.0"), true),
                    (json!("urn:ietf:rfc:3986"), true),
                    (json!("https://example.org/a b"), false),
                    (json!(""), false),
                ],
            );
        }
    }

    #[test]
    fn oids_and_uuids_follow_their_urn_forms() {
        check(
            Oid,
            &[
                (json!("urn:oid:2.16.840.1.113883"), true),
                (json!("urn:oid:1.0.3"), true),
                (json!("urn:oid:3.1"), false),
                (json!("urn:oid:1.01"), false),
                (json!("urn:oid:1"), false),
                (json!("2.16.840"), false),
            ],
        );
        check(
            Uuid,
            &[
                (json!("urn:uuid:c757873d-ec9a-4326-a141-556f43239520"), true),
                (json!("urn:uuid:C757873D-EC9A-4326-A141-556F43239520"), false),
                (json!("c757873d-ec9a-4326-a141-556f43239520"), false),
                (json!("urn:uuid:c757873d-ec9a-4326-a141"), false),
            ],
        );
    }

    #[test]
    fn base64_is_padded_groups_of_four() {
        check(
            Base64Binary,
            &[
                (json!("aGVsbG8="), true),
                (json!("aGVs bG8h\n"), true),
                (json!("aGVsbG8"), false),
                (json!("aGV*bG8="), false),
                (json!("a==="), false),
                (json!("aG=sbG8="), false),
            ],
        );
    }

    #[test]
    fn dates_are_real_calendar_dates_of_year_month_or_day_precision() {
        check(
            Date,
            &[
                (json!("2024"), true),
                (json!("2024-02"), true),
                (json!("2024-02-29"), true),
                (json!("2000-02-29"), true),
                (json!("1900-02-29"), false),
                (json!("2023-02-29"), false),
                (json!("2024-02-30"), false),
                (json!("2024-04-31"), false),
                (json!("2024-13-45"), false),
                (json!("2024-00"), false),
                (json!("0000"), false),
                (json!("24-01-01"), false),
                (json!("2024-1-1"), false),
                (json!("2024-01-01T10:00:00Z"), false),
            ],
        );
    }

    #[test]
    fn date_times_need_a_time_zone_when_a_time_is_given() {
        check(
            DateTime,
            &[
                (json!("2024"), true),
                (json!("2024-03"), true),
                (json!("2024-03-01"), true),
                (json!("2024-03-01T10:00:00Z"), true),
                (json!("2024-03-01T10:00:00.123+01:00"), true),
                (json!("2024-03-01T23:59:60-14:00"), true),
                (json!("2024-03-01T10:00:00"), false),
                (json!("2024-03-01T10:00Z"), false),
                (json!("2024-03-01T24:00:00Z"), false),
                (json!("2024-03-01T10:00:00+14:30"), false),
                (json!("2024-03-01T10:00:00+1:00"), false),
                (json!("2024-03T10:00:00Z"), false),
                (json!("2024-02-30T10:00:00Z"), false),
                (json!("2024-13-45"), false),
            ],
        );
    }

    #[test]
    fn instants_are_complete_to_the_second_with_a_time_zone() {
        check(
            Instant,
            &[
                (json!("2024-03-01T10:00:00Z"), true),
                (json!("2024-03-01T10:00:00.5+05:30"), true),
                (json!("2024-03-01"), false),
                (json!("2024-03-01T10:00:00"), false),
                (json!("2024-03-01T10:00:00.Z"), false),
            ],
        );
    }

    #[test]
    fn times_have_no_time_zone() {
        check(
            Time,
            &[
                (json!("00:00:00"), true),
                (json!("23:59:59.999"), true),
                (json!("24:00:00"), false),
                (json!("10:00"), false),
                (json!("10:00:00Z"), false),
                (json!("10:60:00"), false),
            ],
        );
    }

    #[test]
    fn narratives_are_div_elements() {
        check(
            Xhtml,
            &[
                (json!("<div xmlns=\"http://www.w3.org/1999/xhtml\">text</div>"), true),
                (json!("<p>text</p>"), false),
                (json!(""), false),
            ],
        );
    }
}
