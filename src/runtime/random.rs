//! Random secrets: an install's client secret, refresh tokens.

/// 32 random bytes from the OS's generator, URL-safe base64 without padding. Fails only when the
/// OS has no generator to offer; then no safe secret can be made, and the caller says so.
pub fn secret() -> Result<String, RandomError> {
    use base64::Engine;
    let mut bytes = [0_u8; 32];
    getrandom::fill(&mut bytes).map_err(|err| RandomError(err.to_string()))?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// The OS has no random numbers to give.
#[derive(Debug, thiserror::Error)]
#[error("the OS random number generator failed: {0}")]
pub struct RandomError(String);

#[cfg(test)]
mod tests {
    #[test]
    fn secrets_are_long_and_differ() {
        let (a, b) = (super::secret(), super::secret());
        let (a, b) = (a.expect("random"), b.expect("random"));
        assert_eq!(a.len(), 43);
        assert_ne!(a, b);
    }
}
