//! Server timestamps: kept as microseconds since the Unix epoch (sortable, portable between
//! SQLite and PostgreSQL) and rendered as FHIR `instant`s.

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// A point in time with microsecond precision, in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Instant(i64);

impl Instant {
    pub fn now() -> Self {
        let now = OffsetDateTime::now_utc();
        Instant((now.unix_timestamp_nanos() / 1_000) as i64)
    }

    pub fn from_micros(micros: i64) -> Self {
        Instant(micros)
    }

    pub fn micros(self) -> i64 {
        self.0
    }

    /// The FHIR `instant` form, e.g. `2026-11-23T21:12:00.123456Z`.
    pub fn to_fhir(self) -> String {
        let dt = self.to_datetime();
        format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
            dt.year(),
            u8::from(dt.month()),
            dt.day(),
            dt.hour(),
            dt.minute(),
            dt.second(),
            dt.microsecond()
        )
    }

    /// The HTTP-date form for `Last-Modified` (RFC 9110 section 5.6.7).
    pub fn to_http_date(self) -> String {
        let dt = self.to_datetime();
        const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
        const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
        format!(
            "{}, {:02} {} {:04} {:02}:{:02}:{:02} GMT",
            DAYS[dt.weekday().number_days_from_monday() as usize],
            dt.day(),
            MONTHS[u8::from(dt.month()) as usize - 1],
            dt.year(),
            dt.hour(),
            dt.minute(),
            dt.second()
        )
    }

    /// Parses a full RFC 3339 instant (as FHIR `instant` requires a zone).
    pub fn parse_rfc3339(raw: &str) -> Option<Self> {
        let dt = OffsetDateTime::parse(raw, &Rfc3339).ok()?;
        Some(Instant((dt.unix_timestamp_nanos() / 1_000) as i64))
    }

    fn to_datetime(self) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(self.0) * 1_000).unwrap_or(OffsetDateTime::UNIX_EPOCH)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_render_as_fhir_and_http_dates_and_parse_back() {
        let t = Instant::parse_rfc3339("2026-11-23T21:12:00.123456Z").expect("parses");
        assert_eq!(t.to_fhir(), "2026-11-23T21:12:00.123456Z");
        assert_eq!(t.to_http_date(), "Mon, 23 Nov 2026 21:12:00 GMT");
        assert_eq!(Instant::parse_rfc3339(&t.to_fhir()), Some(t));
    }

    #[test]
    fn offsets_are_normalised_to_utc() {
        let t = Instant::parse_rfc3339("2026-11-23T22:12:00+01:00").expect("parses");
        assert_eq!(t.to_fhir(), "2026-11-23T21:12:00.000000Z");
    }
}
