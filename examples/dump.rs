fn main() {
    let path = std::env::args().nth(1).expect("path");
    let bytes = std::fs::read(&path).expect("read");
    match poslake::parse_file(&path, &bytes, &poslake::ParseOptions::default()) {
        Ok(p) => println!("{}", serde_json::to_string_pretty(&p).expect("json")),
        Err(e) => eprintln!("{e}"),
    }
}
