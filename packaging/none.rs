// Never compiled: cargo wants a target in every manifest (see the packaging Cargo.toml files).
