//! A 3x5 pixel font, so `training.png` has labels on machines without any fonts installed
//! (plotters' text needs a system font or a bundled TrueType file).

use plotters::coord::Shift;
use plotters::prelude::*;

/// Rows top to bottom, three pixels each, `1` = ink.
const GLYPHS: &[(char, &str)] = &[
    ('0', "111101101101111"),
    ('1', "010110010010111"),
    ('2', "111001111100111"),
    ('3', "111001111001111"),
    ('4', "101101111001001"),
    ('5', "111100111001111"),
    ('6', "111100111101111"),
    ('7', "111001001010010"),
    ('8', "111101111101111"),
    ('9', "111101111001111"),
    ('a', "010101111101101"),
    ('b', "110101110101110"),
    ('c', "011100100100011"),
    ('d', "110101101101110"),
    ('e', "111100110100111"),
    ('f', "111100110100100"),
    ('g', "011100101101011"),
    ('h', "101101111101101"),
    ('i', "111010010010111"),
    ('j', "001001001101010"),
    ('k', "101101110101101"),
    ('l', "100100100100111"),
    ('m', "101111111101101"),
    ('n', "110101101101101"),
    ('o', "010101101101010"),
    ('p', "110101110100100"),
    ('q', "010101101110011"),
    ('r', "110101110101101"),
    ('s', "011100010001110"),
    ('t', "111010010010010"),
    ('u', "101101101101111"),
    ('v', "101101101101010"),
    ('w', "101101111111101"),
    ('x', "101101010101101"),
    ('y', "101101010010010"),
    ('z', "111001010100111"),
    ('.', "000000000000010"),
    ('-', "000000111000000"),
    ('@', "010101111100011"),
    (':', "000010000010000"),
    ('/', "001001010100100"),
    ('(', "010100100100010"),
    (')', "010001001001010"),
    ('=', "000111000111000"),
    (',', "000000000010100"),
    ('+', "000010111010000"),
    ('_', "000000000000111"),
];

/// Width in pixels of `text` at `scale` (4 columns per character, one of them space).
pub fn text_width(text: &str, scale: i32) -> i32 {
    text.chars().count() as i32 * 4 * scale
}

/// Draws `text` with its top-left corner at `(x, y)`; unknown characters draw as blanks,
/// upper case as lower case.
pub fn draw_text<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    text: &str,
    (x, y): (i32, i32),
    scale: i32,
    color: &RGBColor,
) {
    for (ci, c) in text.chars().enumerate() {
        let c = c.to_ascii_lowercase();
        let Some((_, bits)) = GLYPHS.iter().find(|(g, _)| *g == c) else {
            continue;
        };
        let x0 = x + ci as i32 * 4 * scale;
        for (p, b) in bits.bytes().enumerate() {
            if b == b'1' {
                let (px, py) = (x0 + (p % 3) as i32 * scale, y + (p / 3) as i32 * scale);
                // Drawing outside the area is clipped, never an error worth stopping for.
                let _ = area.draw(&Rectangle::new(
                    [(px, py), (px + scale, py + scale)],
                    color.filled(),
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn glyphs_are_fifteen_pixels_and_unique() {
        let mut seen = std::collections::HashSet::new();
        for (c, g) in super::GLYPHS {
            assert_eq!(g.len(), 15, "{c}");
            assert!(g.bytes().all(|b| b == b'0' || b == b'1'), "{c}");
            assert!(seen.insert(*c), "{c} twice");
        }
    }
}
