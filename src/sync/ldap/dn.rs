//! DN normalisation, so a `member` value written as `CN=Ann, OU=People,...`
//! names the same entry as the DN the server returns for it.

/// Lowercases a DN and drops the spaces around `,`, `+` and `=` (RFC 4514
/// allows them; servers echo what was written). Escaped characters (`\,`,
/// `\ `, `\2C`) are kept as they are, lowercased, so an escaped comma never
/// splits an RDN. Comparing normalised DNs is exact for everything but
/// attribute-type aliases (`2.5.4.3=` vs `cn=`) and hex- versus
/// backslash-escaped forms of the same character, which directories do not
/// mix in practice.
pub fn normalize(dn: &str) -> String {
    let mut out = String::with_capacity(dn.len());
    let mut chars = dn.trim().chars();
    // Spaces seen but not yet written: written only if a non-separator
    // follows, so `a , b` becomes `a,b` but `Ann Lee` keeps its space.
    let mut pending_spaces = 0usize;
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                flush(&mut out, &mut pending_spaces);
                out.push('\\');
                if let Some(n) = chars.next() {
                    out.extend(n.to_lowercase());
                }
            }
            ',' | '+' | '=' => {
                pending_spaces = 0;
                out.push(c);
                // Skip spaces after a separator.
                let rest = chars.as_str();
                let trimmed = rest.trim_start_matches(' ');
                chars = trimmed.chars();
            }
            ' ' => pending_spaces += 1,
            c => {
                flush(&mut out, &mut pending_spaces);
                out.extend(c.to_lowercase());
            }
        }
    }
    out
}

fn flush(out: &mut String, pending: &mut usize) {
    for _ in 0..*pending {
        out.push(' ');
    }
    *pending = 0;
}

/// Whether `dn` (normalised) is `base` (normalised) or lies under it.
pub fn is_under(dn: &str, base: &str) -> bool {
    dn == base
        || (dn.len() > base.len()
            && dn.ends_with(base)
            && dn.as_bytes()[dn.len() - base.len() - 1] == b','
            && !escaped_at(dn, dn.len() - base.len() - 1))
}

fn escaped_at(s: &str, i: usize) -> bool {
    s.as_bytes()[..i]
        .iter()
        .rev()
        .take_while(|&&b| b == b'\\')
        .count()
        % 2
        == 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spacing_and_case() {
        assert_eq!(
            normalize(" CN=Ann Lee , OU = People,DC=Example, dc=org "),
            "cn=ann lee,ou=people,dc=example,dc=org"
        );
        assert_eq!(normalize("cn=a + uid=B,dc=x"), "cn=a+uid=b,dc=x");
    }

    #[test]
    fn escapes_are_kept() {
        assert_eq!(normalize("cn=Lee\\, Ann,dc=X"), "cn=lee\\, ann,dc=x");
        assert_eq!(normalize("cn=Lee\\2C Ann,dc=X"), "cn=lee\\2c ann,dc=x");
        assert_eq!(normalize("cn=x\\ ,dc=y"), "cn=x\\ ,dc=y");
    }

    #[test]
    fn under() {
        assert!(is_under("cn=a,ou=p,dc=x", "ou=p,dc=x"));
        assert!(is_under("ou=p,dc=x", "ou=p,dc=x"));
        assert!(!is_under("cn=a,ou=xp,dc=x", "ou=p,dc=x"));
        assert!(!is_under("cn=a\\,ou=p,dc=x", "ou=p,dc=x"));
    }
}
