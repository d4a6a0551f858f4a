//! The warehouse's inventory snapshot (schema: `docs/inventory-snapshot.md`), as JSON or CSV.

use chrono::{DateTime, NaiveDate, Utc};
use dearsync_core::InvalidValue;
use rust_decimal::Decimal;
use serde::Deserialize;

/// Stock levels at one warehouse at one moment.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Snapshot {
    /// The warehouse's id for it: the idempotency key.
    pub snapshot_id: String,
    /// When the levels were true (RFC 3339, or a date = midnight UTC).
    #[serde(deserialize_with = "instant")]
    pub as_of: DateTime<Utc>,
    /// The DEAR location they are for (else the setting's).
    #[serde(default)]
    pub location: Option<String>,
    /// One line per SKU (and batch).
    pub lines: Vec<SnapshotLine>,
}

/// One SKU's level.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotLine {
    /// The SKU.
    pub sku: String,
    /// The quantity (≥ 0; a JSON number or a decimal string).
    #[serde(deserialize_with = "quantity")]
    pub quantity: Decimal,
    /// Batch or serial number.
    #[serde(default)]
    pub batch: Option<String>,
    /// The batch's expiry date (`2027-03-31`, or a date and time whose date is taken), which
    /// DEAR needs for FEFO products; DEAR's own date for the batch is used when this is absent.
    #[serde(default, deserialize_with = "expiry")]
    pub expiry_date: Option<NaiveDate>,
    /// A CSV expiry cell that is not a date, as written: the line is still read (the column means
    /// nothing for products without expiry dates); a FEFO line relying on it is skipped, named.
    #[serde(skip)]
    pub expiry_unreadable: Option<String>,
}

/// A snapshot that cannot be used: where and what.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SnapshotError {
    /// The field (`lines[12].quantity`) or CSV position (`line 13, quantity`).
    pub field: String,
    /// What is wrong.
    pub message: String,
}

fn err(field: impl Into<String>, message: impl Into<String>) -> SnapshotError {
    SnapshotError {
        field: field.into(),
        message: message.into(),
    }
}

/// Reads `2026-11-20T06:00:00Z` or `2026-11-20` (midnight UTC), as the settings' dates are read.
pub fn parse_instant(text: &str) -> Result<DateTime<Utc>, InvalidValue> {
    dearsync_core::settings::SettingInstant::parse(text).map(|i| i.0)
}

fn instant<'de, D: serde::Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
    let text = String::deserialize(d)?;
    parse_instant(&text).map_err(serde::de::Error::custom)
}

/// Reads an expiry date: `2027-03-31`, or `2027-03-31T00:00:00` (with or without a zone), whose
/// date is taken as written.
pub fn parse_expiry(text: &str) -> Result<NaiveDate, InvalidValue> {
    let t = text.trim();
    let with_time = chrono::DateTime::parse_from_rfc3339(t).is_ok()
        || [
            "%Y-%m-%dT%H:%M:%S%.f",
            "%Y-%m-%d %H:%M:%S%.f",
            "%Y-%m-%dT%H:%M",
        ]
        .iter()
        .any(|f| chrono::NaiveDateTime::parse_from_str(t, f).is_ok());
    let date = if with_time {
        t.get(..10).unwrap_or(t)
    } else {
        t
    };
    NaiveDate::parse_from_str(date, "%Y-%m-%d")
        .map_err(|_| InvalidValue::new(t, "a date (expected YYYY-MM-DD)"))
}

fn expiry<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<NaiveDate>, D::Error> {
    match Option::<String>::deserialize(d)? {
        Some(t) if !t.trim().is_empty() => {
            parse_expiry(&t).map(Some).map_err(serde::de::Error::custom)
        }
        _ => Ok(None),
    }
}

/// Why a quantity's text is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    /// Not a number at all.
    #[error(transparent)]
    NotANumber(InvalidValue),
    /// A count below zero.
    #[error("{0} is negative")]
    Negative(String),
}

/// Reads a quantity's exact text.
pub fn parse_quantity(text: &str) -> Result<Decimal, QuantityError> {
    let t = text.trim();
    let q = t
        .parse::<Decimal>()
        .or_else(|_| Decimal::from_scientific(t))
        .map_err(|_| QuantityError::NotANumber(InvalidValue::new(t, "a number")))?;
    if q.is_sign_negative() && !q.is_zero() {
        return Err(QuantityError::Negative(t.to_owned()));
    }
    Ok(q)
}

fn quantity<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Decimal, D::Error> {
    let v = serde_json::Value::deserialize(d)?;
    let text = match &v {
        serde_json::Value::Number(n) => n.to_string(),
        serde_json::Value::String(s) => s.clone(),
        other => {
            return Err(serde::de::Error::custom(format!(
                "expected a number, got {other}"
            )));
        }
    };
    parse_quantity(&text).map_err(serde::de::Error::custom)
}

impl Snapshot {
    /// Reads a JSON snapshot from a reader (streamed, not loaded as text first).
    pub fn from_json_reader(reader: impl std::io::Read) -> Result<Snapshot, SnapshotError> {
        let de = &mut serde_json::Deserializer::from_reader(std::io::BufReader::new(reader));
        let s: Snapshot = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            err(
                if path == "." {
                    "(snapshot)".to_owned()
                } else {
                    path
                },
                e.inner().to_string(),
            )
        })?;
        s.check()?;
        Ok(s)
    }

    /// Reads a CSV snapshot, streamed record by record (never loaded as text): a header row, then one
    /// row per SKU (and batch). The id, time and (usually) location come from `options`.
    ///
    /// Header names are matched whatever their case, order, spacing or `_`/`-`, with the aliases real
    /// warehouse exports use (`Item SKU`, `Qty On Hand`, `Lot`, …: [`CsvOptions`]); other columns are
    /// ignored. Cells are trimmed; quoting, `""` escapes, CRLF or LF endings and a UTF-8 BOM are
    /// handled; blank rows are skipped. A location column must hold one location (an empty cell means
    /// the file's). Errors name the physical line (the header is line 1) and the column.
    pub fn from_csv_reader(
        reader: impl std::io::Read,
        options: &CsvOptions<'_>,
    ) -> Result<Snapshot, SnapshotError> {
        // Checked first so a wrong id does not cost a read of the whole file.
        check_id(options.snapshot_id)?;
        let mut rows = CsvRows::new(reader);
        let Some(header_line) = rows.next()? else {
            return Err(err(
                "line 1",
                "the file is empty; expected a header with sku and quantity columns",
            ));
        };
        let columns = Columns::find(rows.record(), header_line, options.quantity_column)?;
        let mut reading = CsvReading::new(options.location);
        while let Some(line) = rows.next()? {
            reading.add(rows.record(), line, &columns)?;
        }
        let (location, lines) = reading.finish();
        let s = Snapshot {
            snapshot_id: options.snapshot_id.to_owned(),
            as_of: options.as_of,
            location,
            lines,
        };
        s.check()?;
        Ok(s)
    }

    /// The same snapshot with the warehouse's SKUs renamed to DEAR's by the tenant's aliases.
    pub fn with_dear_skus(&self, aliases: &dearsync_core::sku::SkuAliases) -> Snapshot {
        let mut mapped = self.clone();
        for line in &mut mapped.lines {
            line.sku = aliases.to_dear(&line.sku).to_owned();
        }
        mapped
    }

    /// Checks ids, SKUs and duplicates.
    pub fn check(&self) -> Result<(), SnapshotError> {
        check_id(&self.snapshot_id)?;
        let mut seen = std::collections::HashSet::new();
        for (i, l) in self.lines.iter().enumerate() {
            if l.sku.trim().is_empty() {
                return Err(err(format!("lines[{i}].sku"), "must not be empty"));
            }
            if !seen.insert(line_key(l)) {
                return Err(err(
                    format!("lines[{i}].sku"),
                    format!("{:?} (batch {:?}) is listed twice", l.sku, l.batch),
                ));
            }
        }
        Ok(())
    }
}

/// The duplicate key of a line: SKU (case aside) and batch.
fn line_key(l: &SnapshotLine) -> (String, String) {
    (
        l.sku.trim().to_ascii_lowercase(),
        l.batch.as_deref().map(str::trim).unwrap_or("").to_owned(),
    )
}

/// A snapshot id must say something: it is the idempotency key.
fn check_id(snapshot_id: &str) -> Result<(), SnapshotError> {
    if snapshot_id.trim().is_empty() {
        return Err(err("snapshot_id", "must not be empty"));
    }
    Ok(())
}

/// What a CSV snapshot does not say itself, for [`Snapshot::from_csv_reader`].
///
/// Columns are found by header name, compared lowercased, trimmed and with `_`, `-` and runs of
/// spaces as one space:
///
/// | column | header names |
/// |---|---|
/// | SKU (required) | `sku`, `product sku`, `item`, `item sku`, `product code`, `code` |
/// | quantity (required) | `quantity`, `qty`, `on hand`, `onhand`, `qty on hand`, `quantity on hand`, `available`, `qty available`, `quantity available` |
/// | batch | `batch`, `batch number`, `batch_sn`, `lot`, `lot number`, `serial` |
/// | expiry date | `expiry`, `expiry date`, `expiration`, `expiration date`, `exp date`, `best before`, `use by` |
/// | location | `location`, `warehouse` |
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CsvOptions<'a> {
    /// The snapshot's id (the idempotency key; a CSV file carries none).
    pub snapshot_id: &'a str,
    /// When the levels were true.
    pub as_of: DateTime<Utc>,
    /// The DEAR location, if the caller knows it; a location column must then agree (case aside).
    pub location: Option<&'a str>,
    /// The header of the column that holds the quantity, for files with several candidates (`On Hand`
    /// and `Available`): any header name, compared as above. Other quantity-like columns are then
    /// ignored. Without it, such a file is refused rather than guessed at.
    pub quantity_column: Option<&'a str>,
}

impl<'a> CsvOptions<'a> {
    /// Options with no location and no quantity column chosen.
    pub fn new(snapshot_id: &'a str, as_of: DateTime<Utc>) -> Self {
        CsvOptions {
            snapshot_id,
            as_of,
            location: None,
            quantity_column: None,
        }
    }
}

/// A column the snapshot reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Sku,
    Quantity,
    Batch,
    Expiry,
    Location,
}

impl Role {
    const ALL: [Role; 5] = [
        Role::Sku,
        Role::Quantity,
        Role::Batch,
        Role::Expiry,
        Role::Location,
    ];

    /// Its name in errors (`line 13, quantity`).
    fn name(self) -> &'static str {
        match self {
            Role::Sku => "sku",
            Role::Quantity => "quantity",
            Role::Batch => "batch",
            Role::Expiry => "expiry date",
            Role::Location => "location",
        }
    }

    /// The header names that mean it, already normalised (see [`normalise_header`]).
    fn aliases(self) -> &'static [&'static str] {
        match self {
            Role::Sku => &[
                "sku",
                "product sku",
                "item",
                "item sku",
                "product code",
                "code",
            ],
            Role::Quantity => &[
                "quantity",
                "qty",
                "on hand",
                "onhand",
                "qty on hand",
                "quantity on hand",
                "available",
                "qty available",
                "quantity available",
            ],
            Role::Batch => &[
                "batch",
                "batch number",
                "batch sn",
                "lot",
                "lot number",
                "serial",
            ],
            Role::Expiry => &[
                "expiry",
                "expiry date",
                "expiration",
                "expiration date",
                "exp date",
                "best before",
                "use by",
            ],
            Role::Location => &["location", "warehouse"],
        }
    }

    fn of(normalised: &str) -> Option<Role> {
        Role::ALL
            .into_iter()
            .find(|r| r.aliases().contains(&normalised))
    }
}

/// Lowercased, trimmed, with `_`, `-` and runs of whitespace as one space: `Qty_On-Hand` → `qty on hand`.
fn normalise_header(name: &str) -> String {
    name.split(|c: char| c.is_whitespace() || c == '_' || c == '-')
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

/// `"A"`, `"A" and "B"`, `"A", "B" and "C"`.
fn quoted_list(names: &[&str]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("{n:?}")).collect();
    match quoted.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} and {last}", rest.join(", ")),
        _ => quoted.concat(),
    }
}

/// Where the snapshot's columns are in a CSV file.
#[derive(Debug, PartialEq, Eq)]
struct Columns {
    /// How many fields every row has (the header's count, ignored columns included).
    count: usize,
    sku: usize,
    quantity: usize,
    batch: Option<usize>,
    expiry: Option<usize>,
    location: Option<usize>,
}

impl Columns {
    /// Reads the header row (on `line`).
    fn find(
        header: &csv::ByteRecord,
        line: u64,
        quantity_column: Option<&str>,
    ) -> Result<Columns, SnapshotError> {
        let here = format!("line {line}");
        // Names only need to be text to match an alias; an undecodable ignored column is no error.
        let names: Vec<String> = header
            .iter()
            .map(|f| String::from_utf8_lossy(f).trim().to_owned())
            .collect();
        if names.iter().any(|n| n.contains(['\r', '\n'])) {
            // A CR-only file (or a stray quote) reads as one long header row: say so, not "no sku".
            return Err(err(
                here,
                "the header row holds a line break: the file's lines must end in LF or CRLF, \
                 and quotes must be closed",
            ));
        }
        let normalised: Vec<String> = names.iter().map(|n| normalise_header(n)).collect();
        let columns = ColumnNames {
            names: &names,
            normalised: &normalised,
            line,
        };
        let quantity = columns.quantity(quantity_column)?;
        let taken = |role: Role| columns.single(role, Some(quantity));
        Ok(Columns {
            count: names.len(),
            sku: taken(Role::Sku)?.ok_or_else(|| columns.missing(Role::Sku))?,
            quantity,
            batch: taken(Role::Batch)?,
            expiry: taken(Role::Expiry)?,
            location: taken(Role::Location)?,
        })
    }
}

/// A header row's names, as written and normalised, for finding columns and naming them in errors.
struct ColumnNames<'h> {
    names: &'h [String],
    normalised: &'h [String],
    line: u64,
}

impl ColumnNames<'_> {
    /// The quantity column: the caller's choice, else the one column named like a quantity.
    fn quantity(&self, chosen: Option<&str>) -> Result<usize, SnapshotError> {
        let Some(chosen) = chosen else {
            return self
                .single(Role::Quantity, None)?
                .ok_or_else(|| self.missing(Role::Quantity));
        };
        let wanted = normalise_header(chosen);
        let found: Vec<usize> = (0..self.names.len())
            .filter(|&i| self.normalised[i] == wanted)
            .collect();
        match found.as_slice() {
            [i] => Ok(*i),
            [] => Err(err(
                format!("line {}", self.line),
                format!(
                    "the quantity column {chosen:?} is not in the header ({})",
                    self.listing()
                ),
            )),
            _ => Err(err(
                format!("line {}", self.line),
                format!(
                    "columns {} all match the quantity column {chosen:?}",
                    self.quoted(&found)
                ),
            )),
        }
    }

    /// The one column named like `role` (not `except`), if any; two such columns are an error.
    fn single(&self, role: Role, except: Option<usize>) -> Result<Option<usize>, SnapshotError> {
        let found: Vec<usize> = (0..self.names.len())
            .filter(|&i| Some(i) != except && Role::of(&self.normalised[i]) == Some(role))
            .collect();
        match found.as_slice() {
            [] => Ok(None),
            [i] => Ok(Some(*i)),
            _ => {
                let hint = if role == Role::Quantity {
                    "; name the one to use (--quantity-column)"
                } else {
                    ""
                };
                Err(err(
                    format!("line {}", self.line),
                    format!(
                        "columns {} could each be the {}{hint}",
                        self.quoted(&found),
                        role.name()
                    ),
                ))
            }
        }
    }

    fn missing(&self, role: Role) -> SnapshotError {
        err(
            format!("line {}", self.line),
            format!(
                "no {} column (named {}); {}",
                role.name(),
                role.aliases().join(", "),
                self.listing()
            ),
        )
    }

    fn quoted(&self, indexes: &[usize]) -> String {
        let names: Vec<&str> = indexes.iter().map(|&i| self.names[i].as_str()).collect();
        quoted_list(&names)
    }

    /// `the header has "A", "B"` — what was found, for errors.
    fn listing(&self) -> String {
        let names: Vec<String> = self.names.iter().map(|n| format!("{n:?}")).collect();
        format!("the header has {}", names.join(", "))
    }
}

/// The rows read so far, and what the file has said about its location.
struct CsvReading {
    lines: Vec<SnapshotLine>,
    location: Option<String>,
    /// Each SKU+batch's line, to name both lines of a duplicate.
    seen: std::collections::HashMap<(String, String), u64>,
}

impl CsvReading {
    fn new(location: Option<&str>) -> Self {
        CsvReading {
            lines: Vec::new(),
            location: location.map(str::to_owned),
            seen: std::collections::HashMap::new(),
        }
    }

    /// Adds the row on `line`.
    fn add(
        &mut self,
        record: &csv::ByteRecord,
        line: u64,
        columns: &Columns,
    ) -> Result<(), SnapshotError> {
        if record.len() != columns.count {
            // A quote left open swallows the following lines into one field: hint at it.
            let open_quote = record.iter().any(|f| f.contains(&b'\n'));
            return Err(err(
                format!("line {line}"),
                format!(
                    "{} fields, the header has {}{}",
                    record.len(),
                    columns.count,
                    if open_quote {
                        " (is a quote not closed?)"
                    } else {
                        ""
                    }
                ),
            ));
        }
        let sku = cell(record, columns.sku, line, Role::Sku)?;
        if sku.is_empty() {
            return Err(err(format!("line {line}, sku"), "must not be empty"));
        }
        let quantity = parse_quantity(cell(record, columns.quantity, line, Role::Quantity)?)
            .map_err(|m| err(format!("line {line}, quantity"), m.to_string()))?;
        let batch = match columns.batch {
            Some(c) => Some(cell(record, c, line, Role::Batch)?).filter(|b| !b.is_empty()),
            None => None,
        };
        let (expiry_date, expiry_unreadable) = match columns.expiry {
            Some(c) => match cell(record, c, line, Role::Expiry)? {
                "" => (None, None),
                text => match parse_expiry(text) {
                    Ok(d) => (Some(d), None),
                    Err(_) => (None, Some(text.to_owned())),
                },
            },
            None => (None, None),
        };
        if let Some(c) = columns.location {
            self.agree_location(cell(record, c, line, Role::Location)?, line)?;
        }
        let l = SnapshotLine {
            sku: sku.to_owned(),
            quantity,
            batch: batch.map(str::to_owned),
            expiry_date,
            expiry_unreadable,
        };
        if let Some(first) = self.seen.insert(line_key(&l), line) {
            return Err(err(
                format!("line {line}, sku"),
                format!(
                    "{:?} (batch {:?}) is listed twice (also on line {first})",
                    l.sku, l.batch
                ),
            ));
        }
        self.lines.push(l);
        Ok(())
    }

    /// The file's location and lines; the duplicate index is freed before `check` builds its own.
    fn finish(self) -> (Option<String>, Vec<SnapshotLine>) {
        (self.location, self.lines)
    }

    /// One snapshot is one location: every non-empty location cell must name the same one.
    fn agree_location(&mut self, here: &str, line: u64) -> Result<(), SnapshotError> {
        if here.is_empty() {
            return Ok(());
        }
        match &self.location {
            Some(l) if !l.eq_ignore_ascii_case(here) => Err(err(
                format!("line {line}, location"),
                format!("{here:?} differs from {l:?}: one snapshot is one location"),
            )),
            Some(_) => Ok(()),
            None => {
                self.location = Some(here.to_owned());
                Ok(())
            }
        }
    }
}

/// A row's cell in column `index` (the row's length is checked), trimmed.
fn cell(
    record: &csv::ByteRecord,
    index: usize,
    line: u64,
    role: Role,
) -> Result<&str, SnapshotError> {
    let at = || format!("line {line}, {}", role.name());
    let text = std::str::from_utf8(record.get(index).unwrap_or_default())
        .map_err(|_| err(at(), "is not valid UTF-8 (save the file as UTF-8)"))?
        .trim();
    if text.contains(['\r', '\n']) {
        return Err(err(at(), format!("{text:?} holds a line break")));
    }
    Ok(text)
}

/// A CSV file's rows, each with the physical line it starts on; blank rows are skipped.
///
/// The csv crate's own `Position::line()` is the line where it *started looking* for a record:
/// before the empty lines it skips, and with CRLF endings one line early (the `\n` of the previous
/// row is still unread). So rows end at `\n` only (a `\r` before it is trimmed like other
/// whitespace), and [`LineBreaks`] notes where the line breaks are to count the skipped ones.
struct CsvRows<R> {
    csv: csv::Reader<LineBreaks<R>>,
    record: csv::ByteRecord,
    /// Line breaks before the current record.
    breaks_before: u64,
}

impl<R: std::io::Read> CsvRows<R> {
    fn new(reader: R) -> Self {
        let csv = csv::ReaderBuilder::new()
            // The header is read as a row so that its line is known and its problems named here.
            .has_headers(false)
            // Field counts are checked here, to name the line and the header's count.
            .flexible(true)
            .terminator(csv::Terminator::Any(b'\n'))
            .from_reader(LineBreaks::new(reader));
        CsvRows {
            csv,
            record: csv::ByteRecord::new(),
            breaks_before: 0,
        }
    }

    /// Reads the next non-blank row: the line it starts on, or `None` at the end of the file.
    fn next(&mut self) -> Result<Option<u64>, SnapshotError> {
        loop {
            let more = self.csv.read_byte_record(&mut self.record).map_err(|e| {
                err(
                    format!("line {}", self.csv.position().line()),
                    e.to_string(),
                )
            })?;
            if !more {
                return Ok(None);
            }
            let start = self.record.position().map_or(0, csv::Position::byte);
            let line = self.start_line(start);
            // `\r` (CRLF blank lines), spaces, or only commas: nothing to read.
            if self.record.iter().any(|f| !f.trim_ascii().is_empty()) {
                return Ok(Some(line));
            }
        }
    }

    /// The row last read by [`CsvRows::next`].
    fn record(&self) -> &csv::ByteRecord {
        &self.record
    }

    /// The line of the record csv began reading at byte `start`: past the line breaks before
    /// `start`, and past the empty lines (and a BOM) that csv skipped from there.
    fn start_line(&mut self, start: u64) -> u64 {
        let bom = self.csv.get_ref().bom;
        let breaks = &mut self.csv.get_mut().breaks;
        while breaks.front().is_some_and(|&b| b < start) {
            breaks.pop_front();
            self.breaks_before += 1;
        }
        let mut at = if start == 0 && bom { 3 } else { start };
        while breaks.front() == Some(&at) {
            breaks.pop_front();
            self.breaks_before += 1;
            at += 1;
        }
        self.breaks_before + 1
    }
}

/// Passes a file through unchanged, noting the offset of each `\n` that csv has not yet passed
/// (a buffer's worth, plus any inside the current record).
struct LineBreaks<R> {
    inner: R,
    /// Bytes passed through so far.
    offset: u64,
    breaks: std::collections::VecDeque<u64>,
    /// The file starts with a UTF-8 BOM (which csv skips).
    bom: bool,
}

impl<R> LineBreaks<R> {
    fn new(inner: R) -> Self {
        LineBreaks {
            inner,
            offset: 0,
            breaks: std::collections::VecDeque::new(),
            bom: false,
        }
    }
}

impl<R: std::io::Read> LineBreaks<R> {
    /// The first read: at least 4 bytes, or the whole file. csv strips a BOM only if its first read
    /// holds all of it, and takes a first read of nothing but the BOM for the end of the file.
    fn read_start(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let mut n = 0;
        while n < buf.len().min(4) {
            match self.inner.read(&mut buf[n..]) {
                Ok(0) => break,
                Ok(m) => n += m,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(n)
    }
}

impl<R: std::io::Read> std::io::Read for LineBreaks<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = if self.offset == 0 {
            self.read_start(buf)?
        } else {
            self.inner.read(buf)?
        };
        let read = &buf[..n];
        if self.offset == 0 {
            self.bom = read.starts_with(b"\xef\xbb\xbf");
        }
        let offset = self.offset;
        self.breaks.extend(
            read.iter()
                .enumerate()
                .filter(|(_, b)| **b == b'\n')
                .map(|(i, _)| offset + i as u64),
        );
        self.offset += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at() -> DateTime<Utc> {
        parse_instant("2026-11-20T06:00:00Z").unwrap()
    }

    fn read(csv: &str) -> Result<Snapshot, SnapshotError> {
        Snapshot::from_csv_reader(csv.as_bytes(), &CsvOptions::new("S1", at()))
    }

    fn read_err(csv: &str) -> (String, String) {
        let e = read(csv).unwrap_err();
        (e.field, e.message)
    }

    fn line(sku: &str, quantity: &str, batch: Option<&str>) -> SnapshotLine {
        SnapshotLine {
            sku: sku.to_owned(),
            quantity: quantity.parse().unwrap(),
            batch: batch.map(str::to_owned),
            expiry_date: None,
            expiry_unreadable: None,
        }
    }

    fn quantity_column_err(csv: &str, column: &str) -> (String, String) {
        let options = CsvOptions {
            quantity_column: Some(column),
            ..CsvOptions::new("S1", at())
        };
        let e = Snapshot::from_csv_reader(csv.as_bytes(), &options).unwrap_err();
        (e.field, e.message)
    }

    #[test]
    fn json_and_csv_read_the_same_snapshot() {
        let json = r#"{"snapshot_id":"S1","as_of":"2026-11-20T06:00:00Z","location":"Main Warehouse",
            "lines":[{"sku":"AF308","quantity":600,"batch":null},{"sku":"B","quantity":"2.5","batch":"L1"}]}"#;
        let a = Snapshot::from_json_reader(json.as_bytes()).unwrap();
        let csv = "sku,quantity,batch\nAF308,600,\nB,2.5,L1\n";
        let options = CsvOptions {
            location: Some("Main Warehouse"),
            ..CsvOptions::new("S1", at())
        };
        let b = Snapshot::from_csv_reader(csv.as_bytes(), &options).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn a_real_export_reads_exactly_bom_crlf_quotes_escapes_and_commas() {
        let csv = "\u{feff}\"SKU\",\"Quantity\",\"Batch\"\r\n\
                   \"SKU-00001\",600,\r\n\
                   \r\n\
                   \"A \"\"B\"\" C\",\"2.50\",\"L1, L2\"\r\n\
                   \x20 X-1 \t, 3 ,\"\"\r\n\
                   ,,\r\n";
        let s = read(csv).unwrap();
        assert_eq!(
            s,
            Snapshot {
                snapshot_id: "S1".into(),
                as_of: at(),
                location: None,
                lines: vec![
                    line("SKU-00001", "600", None),
                    line("A \"B\" C", "2.50", Some("L1, L2")),
                    line("X-1", "3", None),
                ],
            }
        );
        assert_eq!(
            s.lines[1].quantity.to_string(),
            "2.50",
            "exact, not a float"
        );
    }

    #[test]
    fn header_aliases_match_in_any_case_order_and_spacing() {
        let s = read("\"On Hand\",\"Item SKU\",\"Lot\"\n5,A,L1\n").unwrap();
        assert_eq!(s.lines, vec![line("A", "5", Some("L1"))]);
        let s = read(" Warehouse , QTY_on-hand ,batch_SN, Product  Code\nmain,1.5,,B\n").unwrap();
        assert_eq!(s.lines, vec![line("B", "1.5", None)]);
        assert_eq!(s.location.as_deref(), Some("main"));
    }

    #[test]
    fn aliases_are_written_normalised() {
        for role in Role::ALL {
            for alias in role.aliases() {
                assert_eq!(normalise_header(alias), *alias);
            }
        }
    }

    #[test]
    fn extra_columns_are_ignored() {
        let s =
            read("Description,SKU,UOM,Qty,Bin\n\"Widget, large\",A,ea,4,\nGadget,B,box,0,B-2\n")
                .unwrap();
        assert_eq!(s.lines, vec![line("A", "4", None), line("B", "0", None)]);
    }

    #[test]
    fn two_quantity_columns_are_refused_unless_one_is_chosen() {
        let csv = "SKU,On Hand,Available,Description\nA,5,3,x\n";
        assert_eq!(
            read_err(csv),
            (
                "line 1".into(),
                "columns \"On Hand\" and \"Available\" could each be the quantity; \
                 name the one to use (--quantity-column)"
                    .into()
            )
        );
        for (column, quantity) in [("on_hand", "5"), ("AVAILABLE", "3")] {
            let options = CsvOptions {
                quantity_column: Some(column),
                ..CsvOptions::new("S1", at())
            };
            let s = Snapshot::from_csv_reader(csv.as_bytes(), &options).unwrap();
            assert_eq!(s.lines, vec![line("A", quantity, None)], "{column}");
        }
        // Any header can be chosen, alias or not.
        let options = CsvOptions {
            quantity_column: Some("stock level"),
            ..CsvOptions::new("S1", at())
        };
        let s = Snapshot::from_csv_reader("sku,Stock Level\nA,7\n".as_bytes(), &options).unwrap();
        assert_eq!(s.lines, vec![line("A", "7", None)]);
        assert_eq!(
            quantity_column_err(csv, "Qty"),
            (
                "line 1".into(),
                "the quantity column \"Qty\" is not in the header (the header has \"SKU\", \
                 \"On Hand\", \"Available\", \"Description\")"
                    .into()
            )
        );
        assert_eq!(
            quantity_column_err("sku,Qty,qty\n", "QTY"),
            (
                "line 1".into(),
                "columns \"Qty\" and \"qty\" all match the quantity column \"QTY\"".into()
            )
        );
    }

    #[test]
    fn two_sku_or_batch_columns_are_refused() {
        assert_eq!(
            read_err("SKU,Item,Code,Qty\n"),
            (
                "line 1".into(),
                "columns \"SKU\", \"Item\" and \"Code\" could each be the sku".into()
            )
        );
        assert_eq!(
            read_err("sku,qty,Lot,Serial\n").1,
            "columns \"Lot\" and \"Serial\" could each be the batch"
        );
    }

    #[test]
    fn missing_columns_name_what_was_found() {
        assert_eq!(
            read_err("sku,description\n"),
            (
                "line 1".into(),
                "no quantity column (named quantity, qty, on hand, onhand, qty on hand, \
                 quantity on hand, available, qty available, quantity available); \
                 the header has \"sku\", \"description\""
                    .into()
            )
        );
        assert_eq!(
            read_err("Name,Qty\nA,1\n"),
            (
                "line 1".into(),
                "no sku column (named sku, product sku, item, item sku, product code, code); \
                 the header has \"Name\", \"Qty\""
                    .into()
            )
        );
        assert_eq!(
            read_err(""),
            (
                "line 1".into(),
                "the file is empty; expected a header with sku and quantity columns".into()
            )
        );
        assert_eq!(read_err("\r\n \n,\n").0, "line 1");
    }

    #[test]
    fn a_bad_quantity_names_its_line_and_column() {
        assert_eq!(
            read_err("sku,quantity\nA,1\nB,\"1,200\"\n"),
            (
                "line 3, quantity".into(),
                "\"1,200\" is not a number".into()
            )
        );
        assert_eq!(
            read_err("sku,quantity\nA,-1\n"),
            ("line 2, quantity".into(), "-1 is negative".into())
        );
        assert_eq!(
            read_err("sku,quantity\nA,\n"),
            ("line 2, quantity".into(), "\"\" is not a number".into())
        );
    }

    #[test]
    fn line_numbers_are_physical_lines_whatever_the_endings() {
        // Blank lines, a quoted field spanning two lines, no newline at the end.
        let body = "sku,quantity,note\n\nA,1,\n\n\nB,2,\"two\nlines\"\nC,x,";
        for csv in [body.to_owned(), body.replace('\n', "\r\n")] {
            assert_eq!(read_err(&csv).0, "line 8, quantity", "{csv:?}");
        }
        let blank_start = "\u{feff}\n\r\nsku\n";
        assert_eq!(read_err(blank_start).0, "line 3");
        // A line break inside a cell the snapshot reads is refused, on the line the row starts.
        assert_eq!(
            read_err("sku,quantity\n\n\"B\r\nmulti\",2\r\n"),
            (
                "line 3, sku".into(),
                "\"B\\r\\nmulti\" holds a line break".into()
            )
        );
    }

    #[test]
    fn a_wrong_field_count_names_the_line() {
        assert_eq!(
            read_err("sku,quantity\r\nA,1\r\nB,2,3\r\n"),
            ("line 3".into(), "3 fields, the header has 2".into())
        );
        assert_eq!(
            read_err("sku,quantity\nA,1,\n"),
            ("line 2".into(), "3 fields, the header has 2".into())
        );
        assert_eq!(
            read_err("sku,quantity\n\"A,1\nB,2\n"),
            (
                "line 2".into(),
                "1 fields, the header has 2 (is a quote not closed?)".into()
            )
        );
    }

    #[test]
    fn a_duplicate_sku_names_its_line() {
        assert_eq!(
            read_err("sku,quantity,batch\nA,1,\nB,2,\nA,1,L1\na,3,\n"),
            (
                "line 5, sku".into(),
                "\"a\" (batch None) is listed twice (also on line 2)".into()
            )
        );
    }

    #[test]
    fn cells_must_be_text_and_skus_present() {
        let e = Snapshot::from_csv_reader(
            &b"sku,quantity,note\nA\xff,1,x\n"[..],
            &CsvOptions::new("S1", at()),
        )
        .unwrap_err();
        assert_eq!(
            (e.field.as_str(), e.message.as_str()),
            ("line 2, sku", "is not valid UTF-8 (save the file as UTF-8)")
        );
        // An ignored column may hold anything.
        let s = Snapshot::from_csv_reader(
            &b"sku,quantity,note\nA,1,caf\xe9\n"[..],
            &CsvOptions::new("S1", at()),
        )
        .unwrap();
        assert_eq!(s.lines, vec![line("A", "1", None)]);
        assert_eq!(
            read_err("sku,quantity\n,1\n"),
            ("line 2, sku".into(), "must not be empty".into())
        );
        let e = Snapshot::from_csv_reader("sku,qty\n".as_bytes(), &CsvOptions::new(" ", at()))
            .unwrap_err();
        assert_eq!(e.field, "snapshot_id");
    }

    #[test]
    fn a_cr_only_file_is_named_as_such() {
        assert_eq!(
            read_err("sku,quantity\rA,1\r").1,
            "the header row holds a line break: the file's lines must end in LF or CRLF, \
             and quotes must be closed"
        );
    }

    #[test]
    fn one_file_is_one_location() {
        let s = read("sku,quantity,location\nA,1,Main\nB,2,\nC,3,MAIN\n").unwrap();
        assert_eq!(s.location.as_deref(), Some("Main"));
        assert_eq!(
            read_err("sku,quantity,location\nA,1,Main\nB,2,East\n"),
            (
                "line 3, location".into(),
                "\"East\" differs from \"Main\": one snapshot is one location".into()
            )
        );
        let options = CsvOptions {
            location: Some("main"),
            ..CsvOptions::new("S1", at())
        };
        let csv = "sku,quantity,warehouse\nA,1,Main\nB,2,East\n";
        let e = Snapshot::from_csv_reader(csv.as_bytes(), &options).unwrap_err();
        assert_eq!(e.field, "line 3, location");
        let s = Snapshot::from_csv_reader("sku,qty,location\nA,1,\n".as_bytes(), &options).unwrap();
        assert_eq!(s.location.as_deref(), Some("main"));
    }

    /// Hands out a few bytes per read, as a slow pipe or socket may.
    struct Trickle<'a>(&'a [u8], usize);

    impl std::io::Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.1.min(buf.len()).min(self.0.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn short_reads_change_nothing() {
        let csv = "\u{feff}sku,qty\r\n\r\n\"A\",1\r\n\n B ,2\r\nC,x\r\n";
        for chunk in [1, 2, 3, 5] {
            let e = Snapshot::from_csv_reader(
                Trickle(csv.as_bytes(), chunk),
                &CsvOptions::new("S1", at()),
            )
            .unwrap_err();
            assert_eq!(e.field, "line 6, quantity", "{chunk}: {e}");
            let good = csv.replace("C,x", "C,3");
            let s = Snapshot::from_csv_reader(
                Trickle(good.as_bytes(), chunk),
                &CsvOptions::new("S1", at()),
            )
            .unwrap();
            let want = vec![
                line("A", "1", None),
                line("B", "2", None),
                line("C", "3", None),
            ];
            assert_eq!(s.lines, want, "{chunk}");
        }
    }

    #[test]
    fn a_large_file_streams() {
        let mut csv = String::from("sku,quantity\r\n");
        for i in 0..20_000 {
            csv.push_str(&format!("\"SKU-{i:05}\",{i}\r\n"));
        }
        csv.push_str("SKU-00007,1\r\n");
        let e = read(&csv).unwrap_err();
        assert_eq!(e.field, "line 20002, sku");
        assert!(e.message.ends_with("(also on line 9)"), "{e}");
    }

    #[test]
    fn bad_json_snapshots_name_the_place() {
        let e = Snapshot::from_json_reader(
            r#"{"snapshot_id":"S","as_of":"2026-11-20","lines":[{"sku":"A","quantity":-1}]}"#
                .as_bytes(),
        )
        .unwrap_err();
        assert_eq!(e.field, "lines[0].quantity", "{e}");
        let e = Snapshot::from_json_reader(
            r#"{"snapshot_id":"S","as_of":"soon","lines":[]}"#.as_bytes(),
        )
        .unwrap_err();
        assert_eq!(e.field, "as_of");
        let e = Snapshot::from_json_reader(r#"{"snapshot_id":"S","as_of":"2026-11-20","lines":[{"sku":"A","quantity":1},{"sku":"a","quantity":2}]}"#.as_bytes()).unwrap_err();
        assert_eq!(e.field, "lines[1].sku");
        assert!(e.message.contains("twice"), "{e}");
    }

    #[test]
    fn expiry_dates_are_read_from_csv_and_json_and_bad_ones_named() {
        let csv = "\u{feff}\"Item SKU\",\"Lot\",\"Qty\",\"Expiry Date\"\r\nA-1,L1,5,2027-03-31\r\nA-2,L2,1,2027-04-30T00:00:00\r\nA-3,,2,\r\n";
        let s = read(csv).unwrap();
        let dates: Vec<_> = s.lines.iter().map(|l| l.expiry_date).collect();
        assert_eq!(
            dates,
            [
                NaiveDate::from_ymd_opt(2027, 3, 31),
                NaiveDate::from_ymd_opt(2027, 4, 30),
                None
            ]
        );
        // A cell that is no date does not refuse the file: kept as written, for a FEFO line to
        // be skipped by name.
        let s =
            read("sku,qty,best before\r\nA-1,5,31/03/2027\r\nA-2,1,2027-03-31 junk\r\n").unwrap();
        let unreadable: Vec<_> = s
            .lines
            .iter()
            .map(|l| l.expiry_unreadable.as_deref())
            .collect();
        assert_eq!(unreadable, [Some("31/03/2027"), Some("2027-03-31 junk")]);
        assert!(s.lines.iter().all(|l| l.expiry_date.is_none()));
        assert!(parse_expiry("2027-03-31T00:00:00+10:00").is_ok());
        assert!(parse_expiry("2027-03-31 08:15:00").is_ok());
        let json = r#"{"snapshot_id":"S","as_of":"2026-11-20","lines":[{"sku":"A","quantity":1,"batch":"L","expiry_date":"2027-01-02"},{"sku":"B","quantity":1,"expiry_date":null}]}"#;
        let s = Snapshot::from_json_reader(json.as_bytes()).unwrap();
        assert_eq!(s.lines[0].expiry_date, NaiveDate::from_ymd_opt(2027, 1, 2));
        assert_eq!(s.lines[1].expiry_date, None);
        let bad = r#"{"snapshot_id":"S","as_of":"2026-11-20","lines":[{"sku":"A","quantity":1,"expiry_date":"2027-13-01"}]}"#;
        let e = Snapshot::from_json_reader(bad.as_bytes()).unwrap_err();
        assert_eq!(e.field, "lines[0].expiry_date");
    }
}
