//! Pictures of block masks, the way attention-gym users look at theirs.
//!
//! In: a [`BlockMap`] (from `attnc_compiler::analysis::classify::build_block_maps`).
//! Out: [`BlockStats`] (counts and density), a text picture for terminals
//! ([`text_picture`]: `█` full, `░` partial, `·` empty, downsampled to at most
//! `max_cols` columns), a PNG ([`png_bytes`]: three colours, axes with ticks, a legend)
//! and an SVG ([`svg_string`]). Everything is deterministic: the same map gives the
//! same bytes, so pictures can be snapshot-tested.
//!
//! Downsampling: a cell of a picture covers a rectangle of blocks; it shows full when
//! all of them are full, empty when all are empty, and partial otherwise.

use attnc_compiler::analysis::blockmap::{BlockKind, BlockMap};
use std::fmt;
use std::fmt::Write as _;

/// Block counts of one map.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockStats {
    pub n_q_blocks: usize,
    pub n_kv_blocks: usize,
    pub empty: usize,
    pub partial: usize,
    pub full: usize,
    /// Fraction of blocks that are visited (full or partial).
    pub density: f64,
    /// Fraction of blocks that need the mask evaluated (partial).
    pub partial_fraction: f64,
}

pub fn stats(m: &BlockMap) -> BlockStats {
    let (empty, partial, full) = m.counts();
    let total = (m.n_q_blocks() * m.n_kv_blocks()).max(1) as f64;
    BlockStats {
        n_q_blocks: m.n_q_blocks(),
        n_kv_blocks: m.n_kv_blocks(),
        empty,
        partial,
        full,
        density: (partial + full) as f64 / total,
        partial_fraction: partial as f64 / total,
    }
}

impl fmt::Display for BlockStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let total = self.n_q_blocks * self.n_kv_blocks;
        let pct = |n: usize| 100.0 * n as f64 / total.max(1) as f64;
        writeln!(
            f,
            "blocks: {} x {} = {}",
            self.n_q_blocks, self.n_kv_blocks, total
        )?;
        writeln!(f, "  full    {:>10} ({:6.2}%)", self.full, pct(self.full))?;
        writeln!(
            f,
            "  partial {:>10} ({:6.2}%)",
            self.partial,
            pct(self.partial)
        )?;
        writeln!(f, "  empty   {:>10} ({:6.2}%)", self.empty, pct(self.empty))?;
        write!(f, "density (visited blocks): {:.2}%", 100.0 * self.density)
    }
}

/// A downsampled view: `rows x cols` cells, each covering `fq x fk` blocks.
struct Grid {
    rows: usize,
    cols: usize,
    fq: usize,
    fk: usize,
    cells: Vec<BlockKind>,
}

/// Downsamples so that neither side exceeds `max` cells, with the same factor on both
/// axes (blocks stay square).
fn grid(m: &BlockMap, max: usize) -> Grid {
    let (nq, nkv) = (m.n_q_blocks(), m.n_kv_blocks());
    let max = max.max(1);
    let f = nq.div_ceil(max).max(nkv.div_ceil(max)).max(1);
    let (rows, cols) = (nq.div_ceil(f), nkv.div_ceil(f));
    // (full blocks, visited blocks) per cell
    let mut acc = vec![(0usize, 0usize); rows * cols];
    for i in 0..nq {
        let r = i / f;
        for run in m.row(i) {
            let (s, e) = (run.start as usize, run.end as usize);
            let mut c = s / f;
            while c * f < e {
                let lo = s.max(c * f);
                let hi = e.min((c + 1) * f);
                let a = &mut acc[r * cols + c];
                a.1 += hi - lo;
                if run.full == 1 {
                    a.0 += hi - lo;
                }
                c += 1;
            }
        }
    }
    let cells = (0..rows * cols)
        .map(|k| {
            let (r, c) = (k / cols, k % cols);
            let area = ((r + 1) * f).min(nq).saturating_sub(r * f)
                * ((c + 1) * f).min(nkv).saturating_sub(c * f);
            let (full, visited) = acc[k];
            if visited == 0 {
                BlockKind::Empty
            } else if full == area {
                BlockKind::Full
            } else {
                BlockKind::Partial
            }
        })
        .collect();
    Grid {
        rows,
        cols,
        fq: f,
        fk: f,
        cells,
    }
}

fn glyph(k: BlockKind) -> char {
    match k {
        BlockKind::Full => '█',
        BlockKind::Partial => '░',
        BlockKind::Empty => '·',
    }
}

/// A text picture at most `max_cols` characters wide (plus labels): rows are query
/// blocks, columns kv blocks, each labelled with the first position it covers.
pub fn text_picture(m: &BlockMap, max_cols: usize) -> String {
    let g = grid(m, max_cols);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} x {} blocks of {} x {} (Lq = {}, Lkv = {}); one character = {} x {} blocks",
        m.n_q_blocks(),
        m.n_kv_blocks(),
        m.q_block,
        m.kv_block,
        m.lq,
        m.lkv,
        g.fq,
        g.fk
    );
    // the kv axis: 0 over the first column and the last position ending over the last
    // one; a picture narrower than that gets the range instead
    let last_kv = m.lkv.saturating_sub(1).to_string();
    let axis = if g.cols >= last_kv.len() + 2 {
        format!("0{last_kv:>w$}", w = g.cols - 1)
    } else {
        format!("0..{last_kv}")
    };
    let _ = writeln!(out, "{:>8}   {axis}", "kv");
    let _ = writeln!(out, "{:>8}  +{}+", "q", "-".repeat(g.cols));
    let label_every = g.rows.div_ceil(16).max(1);
    for r in 0..g.rows {
        let label = if r % label_every == 0 || r + 1 == g.rows {
            (r * g.fq * m.q_block).to_string()
        } else {
            String::new()
        };
        let line: String = g.cells[r * g.cols..(r + 1) * g.cols]
            .iter()
            .map(|&k| glyph(k))
            .collect();
        let _ = writeln!(out, "{label:>8}  |{line}|");
    }
    let _ = writeln!(out, "{:>8}  +{}+", "", "-".repeat(g.cols));
    let _ = writeln!(out, "{:>8}  █ full   ░ partial   · empty", "");
    out
}

const FULL_RGB: [u8; 3] = [31, 71, 136];
const PARTIAL_RGB: [u8; 3] = [244, 162, 56];
const EMPTY_RGB: [u8; 3] = [236, 236, 236];
const INK: [u8; 3] = [30, 30, 30];
/// The pictures' legend, left to right.
const LEGEND: [(BlockKind, &str); 3] = [
    (BlockKind::Full, "full"),
    (BlockKind::Partial, "partial"),
    (BlockKind::Empty, "empty"),
];
const PAPER: [u8; 3] = [255, 255, 255];

fn rgb(k: BlockKind) -> [u8; 3] {
    match k {
        BlockKind::Full => FULL_RGB,
        BlockKind::Partial => PARTIAL_RGB,
        BlockKind::Empty => EMPTY_RGB,
    }
}

fn hex(c: [u8; 3]) -> String {
    format!("#{:02x}{:02x}{:02x}", c[0], c[1], c[2])
}

/// 3x5 bitmaps (rows top to bottom, 3 bits each, MSB left) for the few characters the
/// axes and legend use.
fn font(c: char) -> [u8; 5] {
    match c {
        '0' => [7, 5, 5, 5, 7],
        '1' => [2, 6, 2, 2, 7],
        '2' => [7, 1, 7, 4, 7],
        '3' => [7, 1, 7, 1, 7],
        '4' => [5, 5, 7, 1, 1],
        '5' => [7, 4, 7, 1, 7],
        '6' => [7, 4, 7, 5, 7],
        '7' => [7, 1, 1, 2, 2],
        '8' => [7, 5, 7, 5, 7],
        '9' => [7, 5, 7, 1, 7],
        'a' => [0, 3, 5, 5, 3],
        'e' => [2, 5, 7, 4, 3],
        'f' => [3, 4, 6, 4, 4],
        'i' => [2, 0, 2, 2, 2],
        'k' => [4, 5, 6, 5, 5],
        'l' => [6, 2, 2, 2, 7],
        'm' => [0, 6, 7, 5, 5],
        'p' => [0, 6, 5, 6, 4],
        'q' => [0, 3, 5, 3, 1],
        'r' => [0, 5, 6, 4, 4],
        't' => [2, 7, 2, 2, 3],
        'u' => [0, 5, 5, 5, 3],
        'v' => [0, 5, 5, 5, 2],
        'y' => [0, 5, 3, 1, 6],
        'x' => [0, 5, 2, 5, 5],
        _ => [0; 5],
    }
}

/// An RGB canvas.
struct Canvas {
    w: usize,
    h: usize,
    px: Vec<u8>,
}

impl Canvas {
    fn new(w: usize, h: usize) -> Self {
        Canvas {
            w,
            h,
            px: PAPER.iter().copied().cycle().take(w * h * 3).collect(),
        }
    }
    fn rect(&mut self, x: usize, y: usize, w: usize, h: usize, c: [u8; 3]) {
        for yy in y..(y + h).min(self.h) {
            for xx in x..(x + w).min(self.w) {
                let o = (yy * self.w + xx) * 3;
                self.px[o..o + 3].copy_from_slice(&c);
            }
        }
    }
    /// Text at scale 2 (8 px per character), top-left at (x, y).
    fn text(&mut self, x: usize, y: usize, s: &str) {
        for (i, ch) in s.chars().enumerate() {
            let g = font(ch);
            for (row, bits) in g.iter().enumerate() {
                for col in 0..3 {
                    if bits & (4 >> col) != 0 {
                        self.rect(x + i * 8 + col * 2, y + row * 2, 2, 2, INK);
                    }
                }
            }
        }
    }
}

const TEXT_W: usize = 8;
const LEFT: usize = 64;
const TOP: usize = 44;
const BOTTOM: usize = 40;
const RIGHT: usize = 40;
/// Largest picture body side, in pixels.
const BODY: usize = 512;

/// Layout shared by the PNG and the SVG: cell size and picture size.
fn layout(g: &Grid) -> (usize, usize, usize) {
    let cell = (BODY / g.rows.max(g.cols).max(1)).max(1);
    let w = LEFT + g.cols * cell + RIGHT;
    let h = TOP + g.rows * cell + BOTTOM;
    (cell, w, h)
}

/// Tick positions along an axis of `n` cells each covering `per_cell` positions:
/// (cell offset, label) at 0, quarters and the end.
fn ticks(n: usize, per_cell: usize, len: usize) -> Vec<(usize, String)> {
    let mut out: Vec<(usize, String)> = Vec::new();
    for k in 0..=4 {
        let c = n * k / 4;
        let pos = (c * per_cell).min(len);
        if out.last().is_none_or(|l| l.0 != c) {
            out.push((c, pos.to_string()));
        }
    }
    out
}

/// Errors of the picture writers.
#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    #[error("PNG encoding failed: {0}")]
    Png(#[from] png::EncodingError),
}

/// A PNG picture of the map: blocks in three colours, kv along x, q down y, ticks with
/// positions, and a legend strip.
pub fn png_bytes(m: &BlockMap) -> Result<Vec<u8>, ViewError> {
    let g = grid(m, BODY);
    let (cell, w, h) = layout(&g);
    let mut cv = Canvas::new(w, h);
    for r in 0..g.rows {
        for c in 0..g.cols {
            cv.rect(
                LEFT + c * cell,
                TOP + r * cell,
                cell,
                cell,
                rgb(g.cells[r * g.cols + c]),
            );
        }
    }
    let (bw, bh) = (g.cols * cell, g.rows * cell);
    // Axes.
    cv.rect(LEFT - 1, TOP - 1, bw + 2, 1, INK);
    cv.rect(LEFT - 1, TOP - 1, 1, bh + 2, INK);
    cv.rect(LEFT - 1, TOP + bh, bw + 2, 1, INK);
    cv.rect(LEFT + bw, TOP - 1, 1, bh + 2, INK);
    for (c, label) in ticks(g.cols, g.fk * m.kv_block, m.lkv) {
        let x = LEFT + c * cell;
        cv.rect(x.min(LEFT + bw), TOP - 5, 1, 4, INK);
        let tx = x
            .saturating_sub(label.len() * TEXT_W / 2)
            .min(w.saturating_sub(label.len() * TEXT_W));
        cv.text(tx, TOP - 17, &label);
    }
    for (r, label) in ticks(g.rows, g.fq * m.q_block, m.lq) {
        let y = TOP + r * cell;
        cv.rect(LEFT - 5, y.min(TOP + bh), 4, 1, INK);
        cv.text(
            LEFT.saturating_sub(7 + label.len() * TEXT_W),
            y.saturating_sub(5),
            &label,
        );
    }
    cv.text(LEFT + bw / 2 - TEXT_W, 4, "kv");
    cv.text(4, TOP + bh / 2, "q");
    // Legend.
    let ly = TOP + bh + 20;
    let mut x = LEFT;
    for (k, name) in LEGEND {
        cv.rect(x, ly, 12, 12, rgb(k));
        cv.rect(x, ly, 12, 1, INK);
        cv.rect(x, ly + 11, 12, 1, INK);
        cv.rect(x, ly, 1, 12, INK);
        cv.rect(x + 11, ly, 1, 12, INK);
        cv.text(x + 16, ly + 1, name);
        x += 16 + name.len() * TEXT_W + 16;
    }
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, w as u32, h as u32);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut wr = enc.write_header()?;
        wr.write_image_data(&cv.px)?;
        wr.finish()?;
    }
    Ok(out)
}

/// An SVG picture with the same layout as [`png_bytes`]; runs of equal cells in a row
/// are one rectangle each.
pub fn svg_string(m: &BlockMap) -> String {
    let g = grid(m, BODY);
    let (cell, w, h) = layout(&g);
    let (bw, bh) = (g.cols * cell, g.rows * cell);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="monospace" font-size="10">"#
    );
    let _ = writeln!(
        s,
        r#"<rect x="0" y="0" width="{w}" height="{h}" fill="{}"/>"#,
        hex(PAPER)
    );
    let _ = writeln!(
        s,
        r#"<rect x="{LEFT}" y="{TOP}" width="{bw}" height="{bh}" fill="{}"/>"#,
        hex(EMPTY_RGB)
    );
    for r in 0..g.rows {
        let row = &g.cells[r * g.cols..(r + 1) * g.cols];
        let mut c = 0;
        while c < g.cols {
            let k = row[c];
            let mut e = c + 1;
            while e < g.cols && row[e] == k {
                e += 1;
            }
            if k != BlockKind::Empty {
                let _ = writeln!(
                    s,
                    r#"<rect x="{}" y="{}" width="{}" height="{cell}" fill="{}"/>"#,
                    LEFT + c * cell,
                    TOP + r * cell,
                    (e - c) * cell,
                    hex(rgb(k))
                );
            }
            c = e;
        }
    }
    let _ = writeln!(
        s,
        r#"<rect x="{LEFT}" y="{TOP}" width="{bw}" height="{bh}" fill="none" stroke="{}"/>"#,
        hex(INK)
    );
    for (c, label) in ticks(g.cols, g.fk * m.kv_block, m.lkv) {
        let x = LEFT + c * cell;
        let _ = writeln!(
            s,
            r#"<line x1="{x}" y1="{}" x2="{x}" y2="{TOP}" stroke="{}"/>"#,
            TOP - 4,
            hex(INK)
        );
        let _ = writeln!(
            s,
            r#"<text x="{x}" y="{}" text-anchor="middle">{label}</text>"#,
            TOP - 8
        );
    }
    for (r, label) in ticks(g.rows, g.fq * m.q_block, m.lq) {
        let y = TOP + r * cell;
        let _ = writeln!(
            s,
            r#"<line x1="{}" y1="{y}" x2="{LEFT}" y2="{y}" stroke="{}"/>"#,
            LEFT - 4,
            hex(INK)
        );
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="end">{label}</text>"#,
            LEFT - 6,
            y + 3
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="14" text-anchor="middle">kv</text>"#,
        LEFT + bw / 2
    );
    let _ = writeln!(s, r#"<text x="4" y="{}">q</text>"#, TOP + bh / 2);
    let ly = TOP + bh + 20;
    let mut x = LEFT;
    for (k, name) in LEGEND {
        let _ = writeln!(
            s,
            r#"<rect x="{x}" y="{ly}" width="12" height="12" fill="{}" stroke="{}"/><text x="{}" y="{}">{name}</text>"#,
            hex(rgb(k)),
            hex(INK),
            x + 16,
            ly + 10
        );
        x += 16 + name.len() * TEXT_W + 16;
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn causal(n: usize, blk: usize) -> BlockMap {
        BlockMap::from_fn(n, n, blk, blk, |i, j| {
            if j < i {
                BlockKind::Full
            } else if j == i {
                BlockKind::Partial
            } else {
                BlockKind::Empty
            }
        })
    }

    #[test]
    fn text_picture_small_causal() {
        let m = causal(40, 10);
        let t = text_picture(&m, 64);
        let rows: Vec<&str> = t.lines().filter(|l| l.contains('|')).collect();
        assert_eq!(rows.len(), 4);
        for (i, r) in rows.iter().enumerate() {
            let cells: String = r.split('|').nth(1).unwrap().chars().collect();
            let want: String = (0..4).map(|j| glyph(m.kind(i, j))).collect();
            assert_eq!(cells, want);
        }
        let s = stats(&m);
        assert_eq!((s.full, s.partial, s.empty), (6, 4, 6));
        assert!((s.density - 10.0 / 16.0).abs() < 1e-12);
    }

    #[test]
    fn kv_axis_lines_up_with_the_picture_or_gives_the_range() {
        // wide enough: 0 over the first cell, the last kv position ending over the last
        let m = causal(1024, 128);
        let t = text_picture(&m, 64);
        let lines: Vec<&str> = t.lines().collect();
        let first_row = lines.iter().find(|l| l.contains('|')).unwrap();
        let first_cell = first_row.find('|').unwrap() + 1;
        let axis = lines[1];
        assert_eq!(axis.find('0'), Some(first_cell), "{t}");
        let last_cell = first_cell + first_row.split('|').nth(1).unwrap().chars().count() - 1;
        assert_eq!(axis.trim_end().len() - 1, last_cell, "{t}");
        // narrower than its label (2 columns, Lkv = 1000): the range, nothing misaligned
        let m = causal(1000, 500);
        let t = text_picture(&m, 64);
        assert!(t.lines().nth(1).unwrap().ends_with("kv   0..999"), "{t}");
    }

    #[test]
    fn downsampling_keeps_width_and_mixes() {
        let m = causal(1000, 1);
        let t = text_picture(&m, 64);
        for l in t.lines().filter(|l| l.contains('|')) {
            assert!(l.split('|').nth(1).unwrap().chars().count() <= 64);
        }
        let g = grid(&m, 64);
        // Diagonal cells mix full, partial and empty blocks; below is all full.
        assert_eq!(g.cells[0], BlockKind::Partial);
        assert_eq!(g.cells[g.cols], BlockKind::Full);
        assert_eq!(g.cells[1], BlockKind::Empty);
    }

    #[test]
    fn png_decodes_with_the_right_colours() {
        let m = causal(300, 100);
        let bytes = png_bytes(&m).unwrap();
        let dec = png::Decoder::new(std::io::Cursor::new(bytes));
        let mut r = dec.read_info().unwrap();
        let mut buf = vec![0; r.output_buffer_size().unwrap()];
        let info = r.next_frame(&mut buf).unwrap();
        let g = grid(&m, BODY);
        let (cell, w, h) = layout(&g);
        assert_eq!((info.width as usize, info.height as usize), (w, h));
        for i in 0..3 {
            for j in 0..3 {
                let (x, y) = (LEFT + j * cell + cell / 2, TOP + i * cell + cell / 2);
                let o = (y * w + x) * 3;
                assert_eq!(&buf[o..o + 3], &rgb(m.kind(i, j)), "block ({i}, {j})");
            }
        }
    }

    #[test]
    fn svg_has_one_rect_per_run() {
        let m = causal(300, 100);
        let s = svg_string(&m);
        assert!(s.starts_with("<svg") && s.ends_with("</svg>\n"));
        let runs = m.runs.len();
        let coloured = s.matches(&format!(r#"fill="{}""#, hex(FULL_RGB))).count()
            + s.matches(&format!(r#"fill="{}""#, hex(PARTIAL_RGB)))
                .count();
        // Runs plus the two legend swatches.
        assert_eq!(coloured, runs + 2);
    }
}
