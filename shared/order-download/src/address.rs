//! The address trap: an address overwritten on the order in DEAR changes the display lines DEAR
//! shows, while the fields the API sends (and the warehouse ships to) keep the old address.
//!
//! A ship-to address whose display lines disagree with its fields is held for a person. Lines
//! are compared after normalising case, spaces and punctuation; DEAR's second display line is
//! "City State Postcode" with or without the country (its published examples show both).

use dear_client::Address;

/// Lower case, letters and digits only, single spaces.
fn normalised(parts: &[Option<&str>]) -> String {
    parts
        .iter()
        .flatten()
        .flat_map(|p| p.split(|c: char| !c.is_alphanumeric()))
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Why the address's display lines disagree with its fields, both versions named; `None` when
/// they agree, or when DEAR sent no display lines to compare.
pub fn address_mismatch(a: &Address) -> Option<String> {
    let shown1 = normalised(&[a.display_address_line1.as_deref()]);
    let shown2 = normalised(&[a.display_address_line2.as_deref()]);
    if shown1.is_empty() && shown2.is_empty() {
        return None;
    }
    let fields1 = normalised(&[a.line1.as_deref(), a.line2.as_deref()]);
    let place = [a.city.as_deref(), a.state.as_deref(), a.postcode.as_deref()];
    let fields2 = normalised(&place);
    let with_country = normalised(&[place[0], place[1], place[2], a.country.as_deref()]);
    if shown1 == fields1 && (shown2 == fields2 || shown2 == with_country) {
        return None;
    }
    let text = |v: Option<&str>| v.unwrap_or("").trim().to_owned();
    Some(format!(
        "DEAR shows the ship-to address as {:?} / {:?}, but its address fields (what the API sends) \
         say {:?} / {:?}: the address was typed over on the order. Choose the right address in \
         DEAR (or correct the fields), and the order is sent",
        text(a.display_address_line1.as_deref()),
        text(a.display_address_line2.as_deref()),
        [text(a.line1.as_deref()), text(a.line2.as_deref())]
            .join(" ")
            .trim(),
        [
            text(a.city.as_deref()),
            text(a.state.as_deref()),
            text(a.postcode.as_deref()),
            text(a.country.as_deref())
        ]
        .join(" ")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" "),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn address(display: [&str; 2], fields: [&str; 6]) -> Address {
        let some = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        Address {
            display_address_line1: some(display[0]),
            display_address_line2: some(display[1]),
            line1: some(fields[0]),
            line2: some(fields[1]),
            city: some(fields[2]),
            state: some(fields[3]),
            postcode: some(fields[4]),
            country: some(fields[5]),
            ..Default::default()
        }
    }

    #[test]
    fn deals_own_display_lines_agree_with_the_fields_with_or_without_the_country() {
        let park = [
            "3 Park Street Industrial Village",
            "Southbank",
            "Melbourne",
            "VIC",
            "3331",
            "USA",
        ];
        // As DEAR's published sale example shows it: no country on the second line.
        let a = address(
            [
                "3 Park Street Industrial Village Southbank",
                "Melbourne VIC 3331",
            ],
            park,
        );
        assert_eq!(address_mismatch(&a), None);
        // And with it, as another example does; case, commas and spaces do not count.
        let a = address(
            [
                "3 PARK STREET, Industrial Village,  Southbank",
                "Melbourne, VIC 3331 usa",
            ],
            park,
        );
        assert_eq!(address_mismatch(&a), None);
        assert_eq!(
            address_mismatch(&address(["", ""], park)),
            None,
            "nothing shown"
        );
    }

    #[test]
    fn an_address_typed_over_on_the_order_is_named_both_ways() {
        let a = address(
            ["12 New Road", "Leeds LS1 4AP"],
            [
                "391 Park Street",
                "",
                "London",
                "Greater London",
                "SW1A 1AA",
                "United Kingdom",
            ],
        );
        let why = address_mismatch(&a).expect("a mismatch");
        assert!(
            why.contains("\"12 New Road\" / \"Leeds LS1 4AP\"")
                && why.contains(
                    "\"391 Park Street\" / \"London Greater London SW1A 1AA United Kingdom\""
                ),
            "{why}"
        );
        // One line changed is enough.
        let a = address(
            ["391 Park Street", "Leeds LS1 4AP"],
            [
                "391 Park Street",
                "",
                "London",
                "",
                "SW1A 1AA",
                "United Kingdom",
            ],
        );
        assert!(address_mismatch(&a).is_some());
    }
}
