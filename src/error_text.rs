//! Errors as one line of text, for logs and messages: an error with its causes, and a server's answer without its
//! line breaks.

/// The error and its causes, joined with ": ", leaving out a cause whose text is already there: many errors (those
/// of object_store among them) print their source in their own message too.
pub fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut out = String::new();
    let mut next = Some(error);
    while let Some(cause) = next {
        let text = cause.to_string();
        if !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
        next = cause.source();
    }
    out
}

/// A message on one line, at most 300 characters: a server answers with text its client quotes whole.
pub fn one_line(message: &str) -> String {
    let line: String = message.split_whitespace().collect::<Vec<_>>().join(" ");
    match line.char_indices().nth(300) {
        Some((at, _)) => format!("{}…", &line[..at]),
        None => line,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_are_told_once() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
        let wrapped = std::io::Error::other(io);
        // `io::Error::other` prints its source as its own text: told once.
        assert_eq!(chain(&wrapped), "connection refused");
        let generic = object_store_like::Outer(std::io::Error::other("reset"));
        assert_eq!(chain(&generic), "request failed: reset");
    }

    mod object_store_like {
        #[derive(Debug)]
        pub struct Outer(pub std::io::Error);
        impl std::fmt::Display for Outer {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("request failed")
            }
        }
        impl std::error::Error for Outer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
    }

    #[test]
    fn errors_are_logged_on_one_short_line() {
        assert_eq!(
            one_line("parse error:\n  HTTP/1.1 400 Bad Request\r\n\r\n"),
            "parse error: HTTP/1.1 400 Bad Request"
        );
        let long = one_line(&"x ".repeat(1000));
        assert!(long.ends_with('…') && long.chars().count() == 301, "{long}");
    }
}
