//! The hand features of an answer: its calculator annotations `<<expr=result>>` re-done with a small
//! arithmetic parser, the numbers it and its prompt contain, its final answer, truncation and hedging.
//! Shared by training and serving, so the two cannot drift.

use super::N_HAND;

/// One calculator annotation `<<expr=result>>` of an answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Annotation {
    /// The expression evaluated here, `None` when it does not parse as arithmetic.
    pub computed: Option<f64>,
    /// The result the answer wrote, `None` when it is not a number.
    pub written: Option<f64>,
}

impl Annotation {
    /// Both sides are numbers and they differ (beyond rounding the answer may have done).
    pub fn is_wrong(&self) -> bool {
        match (self.computed, self.written) {
            (Some(c), Some(w)) => {
                let tol = 1e-6 * c.abs().max(1.0);
                // Written results are often rounded to two decimals or to an integer: not wrong.
                (c - w).abs() > tol && (c - w).abs() > 0.01_f64.max(0.005 * c.abs().min(1.0))
            }
            _ => false,
        }
    }
}

/// The calculator annotations of an answer, in order, and whether one is left open (`<<` without `>>`).
pub fn annotations(answer: &str) -> (Vec<Annotation>, bool) {
    let mut out = Vec::new();
    let mut rest = answer;
    let mut unclosed = false;
    while let Some(start) = rest.find("<<") {
        let body = &rest[start + 2..];
        let Some(end) = body.find(">>") else {
            unclosed = true;
            break;
        };
        let inner = &body[..end];
        if let Some(eq) = inner.rfind('=') {
            out.push(Annotation {
                computed: eval_arith(&inner[..eq]),
                written: parse_number(&inner[eq + 1..]),
            });
        } else {
            out.push(Annotation {
                computed: None,
                written: None,
            });
        }
        rest = &body[end + 2..];
    }
    (out, unclosed)
}

/// A number as answers write it: `1,234.5`, `$12`, `50%` (as 50), with surrounding blanks.
pub fn parse_number(s: &str) -> Option<f64> {
    let t: String = s
        .trim()
        .trim_end_matches('.')
        .chars()
        .filter(|c| !matches!(c, ',' | '$' | '%' | ' '))
        .collect();
    if t.is_empty() {
        return None;
    }
    t.parse::<f64>().ok().filter(|v| v.is_finite())
}

/// Evaluates `+ - * / ( )` arithmetic over decimal numbers (`x`/`×` multiply, `÷` divides, commas in
/// numbers are ignored, a trailing `%` is taken as written); `None` for anything else.
pub fn eval_arith(expr: &str) -> Option<f64> {
    let toks = tokenize(expr)?;
    let mut p = Parser { toks: &toks, i: 0 };
    let v = p.expr()?;
    (p.i == toks.len() && v.is_finite()).then_some(v)
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Tok {
    Num(f64),
    Op(char),
}

fn tokenize(s: &str) -> Option<Vec<Tok>> {
    let mut out = Vec::new();
    let chars: Vec<char> = s.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            ' ' | '$' | '%' => i += 1,
            '0'..='9' | '.' => {
                let mut t = String::new();
                while i < chars.len()
                    && (chars[i].is_ascii_digit() || matches!(chars[i], '.' | ','))
                {
                    if chars[i] != ',' {
                        t.push(chars[i]);
                    }
                    i += 1;
                }
                out.push(Tok::Num(t.parse().ok()?));
            }
            '+' | '-' | '*' | '/' | '(' | ')' => {
                out.push(Tok::Op(c));
                i += 1;
            }
            'x' | 'X' | '×' => {
                out.push(Tok::Op('*'));
                i += 1;
            }
            '÷' => {
                out.push(Tok::Op('/'));
                i += 1;
            }
            _ => return None,
        }
    }
    Some(out)
}

struct Parser<'a> {
    toks: &'a [Tok],
    i: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<Tok> {
        self.toks.get(self.i).copied()
    }

    fn expr(&mut self) -> Option<f64> {
        let mut v = self.term()?;
        while let Some(Tok::Op(op @ ('+' | '-'))) = self.peek() {
            self.i += 1;
            let r = self.term()?;
            v = if op == '+' { v + r } else { v - r };
        }
        Some(v)
    }

    fn term(&mut self) -> Option<f64> {
        let mut v = self.unary()?;
        while let Some(Tok::Op(op @ ('*' | '/'))) = self.peek() {
            self.i += 1;
            let r = self.unary()?;
            v = if op == '*' { v * r } else { v / r };
        }
        Some(v)
    }

    fn unary(&mut self) -> Option<f64> {
        match self.peek()? {
            Tok::Op('-') => {
                self.i += 1;
                Some(-self.unary()?)
            }
            Tok::Op('+') => {
                self.i += 1;
                self.unary()
            }
            Tok::Op('(') => {
                self.i += 1;
                let v = self.expr()?;
                if self.peek()? != Tok::Op(')') {
                    return None;
                }
                self.i += 1;
                Some(v)
            }
            Tok::Num(v) => {
                self.i += 1;
                Some(v)
            }
            Tok::Op(_) => None,
        }
    }
}

/// Numbers written in `text` (digits with optional thousands commas and decimals), in order.
pub fn numbers(text: &str) -> Vec<f64> {
    let mut out = Vec::new();
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i].is_ascii_digit() {
            let start = i;
            while i < b.len()
                && (b[i].is_ascii_digit()
                    || ((b[i] == b',' || b[i] == b'.')
                        && b.get(i + 1).is_some_and(u8::is_ascii_digit)))
            {
                i += 1;
            }
            let neg = start > 0 && b[start - 1] == b'-';
            if let Some(v) = parse_number(&text[start..i]) {
                out.push(if neg { -v } else { v });
            }
        } else {
            i += 1;
        }
    }
    out
}

/// The number after the final-answer marker `####`, if the answer has one.
pub fn marked_final(answer: &str) -> Option<f64> {
    let at = answer.rfind("####")?;
    numbers(&answer[at + 4..]).first().copied()
}

fn same(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-6 * a.abs().max(1.0)
}

/// The [`HAND_FEATURES`] of an answer to a prompt.
pub fn hand_features(prompt: &str, answer: &str) -> [f64; N_HAND] {
    let (anns, unclosed) = annotations(answer);
    let wrong = anns.iter().filter(|a| a.is_wrong()).count() as f64;
    let marked = marked_final(answer);
    let answer_numbers = numbers(answer);
    let final_number = marked.or_else(|| answer_numbers.last().copied());
    let last_computed = anns.iter().rev().find_map(|a| a.written.or(a.computed));
    let prompt_numbers = numbers(prompt);
    let trimmed = answer.trim_end();
    // No final marker and the text stops mid-sentence or mid-annotation: a cut-off generation.
    let ends_cleanly = trimmed.chars().last().is_some_and(|c| {
        matches!(c, '.' | '!' | '?' | ')' | '"' | '*' | '$') || c.is_ascii_digit()
    });
    let truncated = marked.is_none() && (!ends_cleanly || unclosed);
    let covered = prompt_numbers
        .iter()
        .filter(|p| answer_numbers.iter().any(|a| same(**p, *a)))
        .count();
    let lower = answer.to_lowercase();
    let hedging = [
        "approximately",
        "assum",
        "not possible",
        "cannot",
        "can't",
        "however",
        "mistake",
        "actually",
        "round",
    ]
    .iter()
    .any(|w| lower.contains(w));
    let b = |v: bool| f64::from(u8::from(v));
    [
        (answer.chars().count() as f64).ln_1p(),
        b(marked.is_some()),
        (anns.len() as f64).ln_1p(),
        wrong,
        b(wrong > 0.0),
        b(unclosed),
        b(truncated),
        b(matches!((final_number, last_computed), (Some(f), Some(l)) if same(f, l))),
        b(final_number.is_some_and(|f| (f - f.round()).abs() > 1e-9)),
        b(marked.is_some_and(|f| prompt_numbers.iter().any(|p| same(*p, f)))),
        if prompt_numbers.is_empty() {
            1.0
        } else {
            covered as f64 / prompt_numbers.len() as f64
        },
        b(hedging),
        final_number.map_or(0.0, |f| (f.abs() + 1.0).log10()),
        (prompt.chars().count() as f64).ln_1p(),
        (answer_numbers.len() as f64 / prompt_numbers.len().max(1) as f64).ln_1p(),
    ]
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::super::HAND_FEATURES;
    use super::*;

    #[test]
    fn arithmetic_by_hand() {
        assert_eq!(eval_arith("3*60"), Some(180.0));
        assert_eq!(eval_arith("80000+50000"), Some(130000.0));
        assert_eq!(eval_arith("(2+3)*4 - 6/3"), Some(18.0));
        assert_eq!(eval_arith("1,200 x 2"), Some(2400.0));
        assert_eq!(eval_arith("-5+2"), Some(-3.0));
        assert_eq!(eval_arith("10/4"), Some(2.5));
        assert_eq!(eval_arith("2^3"), None);
        assert_eq!(eval_arith("(1+2"), None);
        assert_eq!(eval_arith("a+b"), None);
    }

    #[test]
    fn annotations_by_hand() {
        // 3*60 = 180 is right, 180*3 = 560 is wrong (540), the third is not arithmetic, the last is open.
        let a = "So 3 x 60 = <<3*60=180>>180. Then <<180*3=560>>560. <<half=x>> and <<15+2";
        let (anns, unclosed) = annotations(a);
        assert!(unclosed);
        assert_eq!(anns.len(), 3);
        assert!(!anns[0].is_wrong());
        assert!(anns[1].is_wrong());
        assert_eq!(anns[1].computed, Some(540.0));
        assert_eq!(anns[1].written, Some(560.0));
        assert!(!anns[2].is_wrong(), "unparsed is not counted wrong");
        // Rounded results are not wrong.
        let (anns, _) = annotations("<<10/3=3.33>>");
        assert!(!anns[0].is_wrong());
    }

    #[test]
    fn hand_features_by_hand() {
        let prompt = "James runs 3 sprints 3 times a week, 60 meters each. How many meters a week?";
        let good =
            "He runs 3*60 = <<3*60=180>>180 meters a session, 180*3 = <<180*3=540>>540.\n#### 540";
        let f = hand_features(prompt, good);
        let get = |f: &[f64; N_HAND], name: &str| {
            f[HAND_FEATURES.iter().position(|n| *n == name).unwrap()]
        };
        assert_eq!(get(&f, "final_marker"), 1.0);
        assert_eq!(get(&f, "wrong_annotations"), 0.0);
        assert_eq!(get(&f, "final_is_last_computed"), 1.0);
        assert_eq!(get(&f, "truncated"), 0.0);
        assert_eq!(get(&f, "prompt_number_coverage"), 1.0);
        assert!((get(&f, "log10_final") - 541f64.log10()).abs() < 1e-12);
        let bad = "He runs <<3*60=180>>180, then <<180*3=560>>560 so the total is 56";
        let f = hand_features(prompt, bad);
        assert_eq!(get(&f, "final_marker"), 0.0);
        assert_eq!(get(&f, "wrong_annotations"), 1.0);
        assert_eq!(get(&f, "any_wrong_annotation"), 1.0);
        assert_eq!(get(&f, "final_is_last_computed"), 0.0);
        assert_eq!(get(&f, "truncated"), 0.0, "ends on a digit");
        let cut = "The house's value is 80,000 + 50,000 = $<<80000+50000=130000>>130,00 and the";
        let f = hand_features("", cut);
        assert_eq!(get(&f, "truncated"), 1.0);
        assert_eq!(get(&f, "final_not_integer"), 0.0);
        assert_eq!(numbers("a -3.5 and 1,200 or 7."), vec![-3.5, 1200.0, 7.0]);
    }
}
