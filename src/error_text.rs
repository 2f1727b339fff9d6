//! Errors as one line of text, for logs and messages: an error with its causes, and a server's answer without its
//! line breaks.

/// The error and its causes, joined with ": ", leaving out a cause whose text is already there: many errors (those
/// of object_store among them) print their source in their own message too.
pub fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut out = String::new();
    let mut next = Some(error);
    while let Some(cause) = next {
        let text = without_xml_answers(&cause.to_string());
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

/// What an error answer says: Azure's `<Error>` as its code, the first line of its message and any authentication
/// detail (`ContainerNotFound: The specified container does not exist.`), rather than the XML with its request id
/// and time; any other body as it is, on one line.
pub fn azure_answer(body: &[u8]) -> String {
    let mut reader = quick_xml::Reader::from_reader(body);
    let (mut root, mut inside, mut text) = (None::<Vec<u8>>, None::<Vec<u8>>, String::new());
    let mut fields: Vec<(Vec<u8>, String)> = Vec::new();
    loop {
        match reader.read_event() {
            Ok(quick_xml::events::Event::Start(e)) => {
                let name = e.local_name().as_ref().to_vec();
                root.get_or_insert_with(|| name.clone());
                inside = Some(name);
                text.clear();
            }
            Ok(quick_xml::events::Event::Text(t)) => text.push_str(&t.decode().unwrap_or_default()),
            Ok(quick_xml::events::Event::CData(t)) => text.push_str(&String::from_utf8_lossy(&t)),
            Ok(quick_xml::events::Event::GeneralRef(r)) => match r.resolve_char_ref() {
                Ok(Some(c)) => text.push(c),
                _ => {
                    let entity = r.decode().unwrap_or_default();
                    text.push_str(quick_xml::escape::resolve_predefined_entity(&entity).unwrap_or_default());
                }
            },
            Ok(quick_xml::events::Event::End(_)) => {
                if let Some(name) = inside.take() {
                    fields.push((name, std::mem::take(&mut text)));
                }
            }
            Ok(quick_xml::events::Event::Eof) | Err(_) => break,
            Ok(_) => {}
        }
    }
    let field = |name: &[u8]| fields.iter().find(|(n, _)| n == name).map(|(_, t)| t.trim().to_owned());
    match (root.as_deref(), field(b"Code")) {
        (Some(b"Error"), Some(code)) => {
            let message = field(b"Message").and_then(|m| m.lines().next().map(str::to_owned)).unwrap_or_default();
            let detail = field(b"AuthenticationErrorDetail").map(|d| format!(" ({d})")).unwrap_or_default();
            one_line(&format!("{code}: {message}{detail}"))
        }
        _ => one_line(&String::from_utf8_lossy(body)),
    }
}

/// `text` with each Azure error answer it quotes (`<?xml …?><Error>…</Error>`, as object_store's errors quote the
/// body) shortened to [`azure_answer`]'s line.
fn without_xml_answers(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(open) = rest.find("<Error>") {
        let Some(close) = rest[open..].find("</Error>").map(|at| open + at + "</Error>".len()) else { break };
        // The declaration just before it goes too.
        let start = rest[..open].rfind("<?xml").filter(|&d| rest[d..open].trim_end().ends_with("?>")).unwrap_or(open);
        out.push_str(rest[..start].trim_end_matches('\u{feff}'));
        out.push_str(&azure_answer(&rest.as_bytes()[start..close]));
        rest = &rest[close..];
    }
    out.push_str(rest);
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
    fn an_error_quoting_an_azure_answer_quotes_its_code_and_message() {
        let text = "Error performing list request: Server returned non-2xx status code: 404 Not Found: \u{feff}<?xml \
                    version=\"1.0\" encoding=\"utf-8\"?><Error><Code>ContainerNotFound</Code><Message>The specified \
                    container does not exist.\nRequestId:9a1\nTime:2026-11-29T15:00:00Z</Message></Error> (tried once)";
        assert_eq!(
            without_xml_answers(text),
            "Error performing list request: Server returned non-2xx status code: 404 Not Found: ContainerNotFound: The \
             specified container does not exist. (tried once)"
        );
        assert_eq!(without_xml_answers("no answer <here>"), "no answer <here>");
    }

    #[test]
    fn an_error_answer_is_its_code_and_message() {
        let body = "\u{feff}<?xml version=\"1.0\" encoding=\"utf-8\"?><Error><Code>ContainerNotFound</Code><Message>The \
                    specified container does not exist.\nRequestId:6d3c\nTime:2026-11-29T14:00:00.000Z</Message></Error>";
        assert_eq!(azure_answer(body.as_bytes()), "ContainerNotFound: The specified container does not exist.");
        // Anything else as it is, on one line.
        assert_eq!(azure_answer(b"bad\ngateway"), "bad gateway");
        assert_eq!(azure_answer(b"<Other><Code>X</Code></Other>"), "<Other><Code>X</Code></Other>");
        // Entities, CDATA and the authentication detail are kept whole (an audit saw only the text after the last
        // entity, and no detail).
        let body = "<Error><Code>InvalidUri</Code><Message>The name &apos;a&amp;b&apos; &lt;x&gt; is \
                    invalid.</Message></Error>";
        assert_eq!(azure_answer(body.as_bytes()), "InvalidUri: The name 'a&b' <x> is invalid.");
        let body = "<Error><Code>X</Code><Message><![CDATA[Held <here>.]]></Message></Error>";
        assert_eq!(azure_answer(body.as_bytes()), "X: Held <here>.");
        let body = "<Error><Code>AuthenticationFailed</Code><Message>Server failed to authenticate the request.\n\
                    RequestId:1</Message><AuthenticationErrorDetail>Signature did not match.</AuthenticationErrorDetail>\
                    </Error>";
        assert_eq!(
            azure_answer(body.as_bytes()),
            "AuthenticationFailed: Server failed to authenticate the request. (Signature did not match.)"
        );
    }

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
