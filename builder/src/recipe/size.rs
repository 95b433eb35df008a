//! Byte sizes written as "2GiB", "512MiB", "300M" or a plain integer of bytes.
use serde::{de, Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Size(pub u64);

impl Size {
    /// The largest size a recipe may name: 16TiB.
    pub const MAX: u64 = 16 << 40;

    fn bounded(v: u64) -> Result<Size, String> {
        if v > Self::MAX {
            return Err(format!("{} is larger than the limit of 16TiB", Size(v)));
        }
        Ok(Size(v))
    }

    pub fn parse(s: &str) -> Result<Size, String> {
        let s = s.trim();
        let digits_end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(digits_end);
        let num: u64 = num
            .parse()
            .map_err(|_| format!("`{s}` is not a size; write e.g. \"2GiB\", \"512MiB\" or a number of bytes"))?;
        let shift = match unit.trim() {
            "" | "B" => 0,
            "K" | "KiB" => 10,
            "M" | "MiB" => 20,
            "G" | "GiB" => 30,
            "T" | "TiB" => 40,
            other => {
                return Err(format!(
                    "unknown size unit `{other}` in `{s}`; use KiB, MiB, GiB or TiB (K, M, G, T mean the same)"
                ))
            }
        };
        let v =
            num.checked_mul(1u64 << shift).ok_or_else(|| format!("size `{s}` is larger than the limit of 16TiB"))?;
        Self::bounded(v)
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = self.0;
        for (shift, unit) in [(40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")] {
            if v >= 1 << shift && v % (1 << shift) == 0 {
                return write!(f, "{}{unit}", v >> shift);
            }
        }
        write!(f, "{v}")
    }
}

impl Serialize for Size {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Size, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = Size;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size such as \"2GiB\" or a number of bytes")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Size, E> {
                let v = u64::try_from(v).map_err(|_| E::custom("a size cannot be negative"))?;
                Size::bounded(v).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Size, E> {
                Size::bounded(v).map_err(E::custom)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Size, E> {
                Size::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::Size;

    #[test]
    fn parses_units() {
        assert_eq!(Size::parse("2GiB").unwrap().0, 2 << 30);
        assert_eq!(Size::parse("300M").unwrap().0, 300 << 20);
        assert_eq!(Size::parse("4096").unwrap().0, 4096);
        assert!(Size::parse("2GB").unwrap_err().contains("unknown size unit `GB`"));
        assert!(Size::parse("big").is_err());
        assert_eq!(Size(256 << 20).to_string(), "256MiB");
        assert_eq!(Size::parse("16TiB").unwrap().0, 16 << 40);
        assert!(Size::parse("15000000TiB").unwrap_err().contains("larger than the limit of 16TiB"));
        assert!(Size::parse("99999999999999999999").is_err());
    }
}
