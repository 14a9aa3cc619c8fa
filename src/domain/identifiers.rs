//! National patient identifiers: the Scottish CHI number and the NHS number (England, Wales).
//! Both are ten digits ending in a check digit: modulus 11 for the NHS number; modulus 11 or,
//! for CHI numbers issued once a birth date's modulus-11 numbers ran out (Public Health
//! Scotland, from February 2026), modulus 10. A CHI number also starts with the date of birth
//! as DDMMYY. Pure functions, no IO.

/// FHIR identifier system of the NHS number.
pub const NHS_NUMBER_SYSTEM: &str = "https://fhir.nhs.uk/Id/nhs-number";

/// The FHIR identifier system of the CHI number that linkbridge itself writes (the sandbox, the
/// examples). No single URI is agreed (docs/referral-workflow.md, "Identifiers and codes"): this is
/// UK Core's draft.
pub const DEFAULT_CHI_SYSTEM: &str = "https://fhir.nhs.uk/Id/chi-number";

/// The identifier systems recognised as CHI numbers unless the operator configures others
/// (`chi_systems`): UK Core's draft, the one Scottish national systems send, and the HL7 UK OID
/// that UK implementation guides use.
pub const KNOWN_CHI_SYSTEMS: [&str; 3] =
    [DEFAULT_CHI_SYSTEM, "http://fhir.nhs.scot.uk/Id/national/chi-number", "urn:oid:2.16.840.1.113883.2.1.3.2.4.16.53"];

/// Why a number is not a valid CHI or NHS number. The message never repeats the number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NumberProblem {
    NotTenDigits,
    NoRealDateOfBirth,
    CheckDigitMismatch,
    CheckDigitTen,
    /// A CHI number's check digit fits neither of the two CHI check digit schemes.
    ChiCheckDigitMismatch,
}

impl NumberProblem {
    pub fn message(self) -> &'static str {
        match self {
            NumberProblem::NotTenDigits => "must be exactly 10 digits",
            NumberProblem::NoRealDateOfBirth => "must start with a real date of birth as DDMMYY",
            NumberProblem::CheckDigitMismatch => "has a check digit that does not match (modulus 11)",
            NumberProblem::CheckDigitTen => "is not a valid number: its modulus-11 check digit would be 10",
            NumberProblem::ChiCheckDigitMismatch => {
                "has a check digit that passes neither the modulus 11 nor the modulus 10 check"
            }
        }
    }
}

/// Checks an NHS number: 10 digits, the last a modulus-11 check digit.
pub fn check_nhs_number(value: &str) -> Result<(), NumberProblem> {
    let digits = ten_digits(value)?;
    check_modulus_11(&digits)
}

/// Checks a CHI number: 10 digits, DDMMYY a real date (any century), the last a check digit
/// under modulus 11 or modulus 10. Public Health Scotland issues modulus-10 numbers for a birth
/// date once its modulus-11 numbers are used up, and asks systems that check digits to accept
/// either (CHI change notice, in force from February 2026).
pub fn check_chi_number(value: &str) -> Result<(), NumberProblem> {
    let digits = ten_digits(value)?;
    let day = digits[0] * 10 + digits[1];
    let month = digits[2] * 10 + digits[3];
    let year = digits[4] * 10 + digits[5];
    if !is_real_ddmmyy(day, month, year) {
        return Err(NumberProblem::NoRealDateOfBirth);
    }
    if check_modulus_11(&digits).is_ok() || check_modulus_10(&digits) {
        return Ok(());
    }
    Err(NumberProblem::ChiCheckDigitMismatch)
}

fn ten_digits(value: &str) -> Result<[u32; 10], NumberProblem> {
    let mut digits = [0u32; 10];
    if value.len() != 10 {
        return Err(NumberProblem::NotTenDigits);
    }
    for (slot, c) in digits.iter_mut().zip(value.chars()) {
        *slot = c.to_digit(10).ok_or(NumberProblem::NotTenDigits)?;
    }
    Ok(digits)
}

/// Weights 10, 9, ..., 2 on the first nine digits; check = 11 - (sum mod 11); 11 means 0 and
/// 10 means no valid number has these nine digits.
fn check_modulus_11(digits: &[u32; 10]) -> Result<(), NumberProblem> {
    let sum: u32 = digits[..9].iter().zip((2..=10).rev()).map(|(d, w)| d * w).sum();
    let expected = match 11 - sum % 11 {
        11 => 0,
        10 => return Err(NumberProblem::CheckDigitTen),
        check => check,
    };
    if digits[9] == expected {
        Ok(())
    } else {
        Err(NumberProblem::CheckDigitMismatch)
    }
}

/// The CHI modulus-10 scheme (the Luhn formula over the first nine digits): from the ninth
/// digit leftwards every other digit is doubled, a two-digit product counting as the sum of its
/// digits; the check digit brings the total to a multiple of 10.
fn check_modulus_10(digits: &[u32; 10]) -> bool {
    let sum: u32 = digits[..9]
        .iter()
        .rev()
        .enumerate()
        .map(|(from_right, &digit)| match from_right % 2 {
            0 if digit * 2 > 9 => digit * 2 - 9,
            0 => digit * 2,
            _ => digit,
        })
        .sum();
    digits[9] == (10 - sum % 10) % 10
}

/// A two-digit year does not say the century, so 29 February is real when the year is a
/// multiple of 4 (00 included: 2000 was a leap year; 1900 was not, but a person born on
/// 29 February 1900 would not be referred today).
fn is_real_ddmmyy(day: u32, month: u32, year: u32) -> bool {
    let days_in_month = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if year % 4 == 0 => 29,
        2 => 28,
        _ => return false,
    };
    (1..=days_in_month).contains(&day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nhs_numbers_are_ten_digits_with_a_modulus_11_check_digit() {
        let cases: &[(&str, &str, Result<(), NumberProblem>)] = &[
            ("the README's example patient", "9434765919", Ok(())),
            ("a number whose check digit is computed as 7", "4010232137", Ok(())),
            ("a check digit of 11 becomes 0", "3112991230", Ok(())),
            ("one digit off", "9434765918", Err(NumberProblem::CheckDigitMismatch)),
            ("nine digits whose check would be 10", "4010232030", Err(NumberProblem::CheckDigitTen)),
            ("nine digits", "943476591", Err(NumberProblem::NotTenDigits)),
            ("eleven digits", "94347659190", Err(NumberProblem::NotTenDigits)),
            ("spaces as printed on letters", "943 476 5919", Err(NumberProblem::NotTenDigits)),
            ("a letter", "94347659A9", Err(NumberProblem::NotTenDigits)),
            ("empty", "", Err(NumberProblem::NotTenDigits)),
        ];
        for (what, number, expected) in cases {
            assert_eq!(check_nhs_number(number), *expected, "{what}: {number}");
        }
    }

    #[test]
    fn chi_numbers_start_with_a_real_date_of_birth_and_end_with_a_check_digit() {
        let cases: &[(&str, &str, Result<(), NumberProblem>)] = &[
            ("born 12 April 1961, female (9th digit even)", "1204610126", Ok(())),
            ("born 1 January 1970, male (9th digit odd), leading zero kept", "0101700016", Ok(())),
            ("born 31 December 1999, check digit 11 becomes 0", "3112991230", Ok(())),
            ("born 29 February 2000", "2902004567", Ok(())),
            ("the modulus-10 number from the CHI change notice's tests", "1507621231", Ok(())),
            ("a modulus-10 number whose modulus-11 check would be 10", "0101701084", Ok(())),
            ("a modulus-10 check of 10 becomes 0", "0101701050", Ok(())),
            ("wrong check digit under both schemes", "1204610127", Err(NumberProblem::ChiCheckDigitMismatch)),
            ("modulus-11 check would be 10, modulus 10 wrong", "0101700130", Err(NumberProblem::ChiCheckDigitMismatch)),
            ("30 February", "3002001234", Err(NumberProblem::NoRealDateOfBirth)),
            ("29 February in a year not divisible by 4", "2902014567", Err(NumberProblem::NoRealDateOfBirth)),
            ("month 13", "0113701234", Err(NumberProblem::NoRealDateOfBirth)),
            ("day 00", "0001701234", Err(NumberProblem::NoRealDateOfBirth)),
            ("31 April", "3104611234", Err(NumberProblem::NoRealDateOfBirth)),
            ("nine digits", "120461012", Err(NumberProblem::NotTenDigits)),
            ("a letter", "12046101X6", Err(NumberProblem::NotTenDigits)),
        ];
        for (what, number, expected) in cases {
            assert_eq!(check_chi_number(number), *expected, "{what}: {number}");
        }
    }
}
