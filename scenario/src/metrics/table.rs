//! Plain-text tables: columns padded to their widest cell, numbers right-aligned, text left-aligned,
//! so reports read well in a terminal and diff cleanly in a log.

/// A plain-text table: `Table::new(&["mode", "ops/s"])`, then [`Table::row`] per row, then
/// [`Table::render`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

/// Whether a cell reads as a number (possibly with a unit or suffix): `12`, `-3.5`, `1,024`, `1.2x`,
/// `64 KiB`, `97%`. Such cells are right-aligned so digits line up.
pub(super) fn numeric_looking(cell: &str) -> bool {
    let s = cell.trim();
    let digits = s.strip_prefix(['-', '+']).unwrap_or(s);
    digits.starts_with(|c: char| c.is_ascii_digit()) && s.split_whitespace().count() <= 2
}

impl Table {
    /// A table with these column headers.
    pub fn new(headers: &[&str]) -> Table {
        Table { headers: headers.iter().map(|h| (*h).to_owned()).collect(), rows: Vec::new() }
    }

    /// Appends a row; missing cells are blank, extra cells add columns without a header.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Number of rows so far (the header not counted).
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether no row was added.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The table as text: the header, a rule of dashes, then the rows, columns two spaces apart, each
    /// line without trailing spaces and ending in a newline.
    pub fn render(&self) -> String {
        let columns = self.rows.iter().map(Vec::len).chain([self.headers.len()]).max().unwrap_or(0);
        let cell = |row: &[String], c: usize| row.get(c).map_or("", String::as_str).to_owned();
        let mut widths = vec![0usize; columns];
        let mut numeric = vec![true; columns];
        for (c, (w, n)) in widths.iter_mut().zip(numeric.iter_mut()).enumerate() {
            *w = cell(&self.headers, c).chars().count();
            for row in &self.rows {
                let text = cell(row, c);
                *w = (*w).max(text.chars().count());
                *n &= text.is_empty() || numeric_looking(&text);
            }
        }
        let line = |row: &[String], header: bool| {
            let mut out = String::new();
            for (c, w) in widths.iter().enumerate() {
                let text = cell(row, c);
                let pad = " ".repeat(w.saturating_sub(text.chars().count()));
                let right =
                    if header { numeric.get(c).copied().unwrap_or(false) } else { numeric_looking(&text) };
                if c > 0 {
                    out.push_str("  ");
                }
                if right {
                    out.push_str(&pad);
                    out.push_str(&text);
                } else {
                    out.push_str(&text);
                    out.push_str(&pad);
                }
            }
            let mut out = out.trim_end().to_owned();
            out.push('\n');
            out
        };
        let mut text = line(&self.headers, true);
        let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
        text.push_str(&rule.join("  "));
        text.push('\n');
        for row in &self.rows {
            text.push_str(&line(row, false));
        }
        text
    }
}
