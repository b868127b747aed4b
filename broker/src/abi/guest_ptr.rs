//! Guest pointers: a `(ptr, len)` pair from a guest is checked once against the linear memory and then
//! used as a slice.
//!
//! **Invariant:** no host function touches guest memory except through these checked slices.

use super::AbiError;

fn range(data_len: usize, ptr: u32, len: u32) -> Result<std::ops::Range<usize>, AbiError> {
    let bad = AbiError::BadPointer { ptr, len, memory_len: data_len };
    let start = usize::try_from(ptr).map_err(|_| bad.clone())?;
    let n = usize::try_from(len).map_err(|_| bad.clone())?;
    match start.checked_add(n) {
        Some(end) if end <= data_len => Ok(start..end),
        _ => Err(bad),
    }
}

/// The guest bytes `[ptr, ptr+len)`, or [`AbiError::BadPointer`].
pub(crate) fn slice(data: &[u8], ptr: u32, len: u32) -> Result<&[u8], AbiError> {
    let r = range(data.len(), ptr, len)?;
    data.get(r).ok_or(AbiError::BadPointer { ptr, len, memory_len: data.len() })
}

/// The guest bytes `[ptr, ptr+len)`, writable, or [`AbiError::BadPointer`].
pub(crate) fn slice_mut(data: &mut [u8], ptr: u32, len: u32) -> Result<&mut [u8], AbiError> {
    let memory_len = data.len();
    let r = range(memory_len, ptr, len)?;
    data.get_mut(r).ok_or(AbiError::BadPointer { ptr, len, memory_len })
}

/// Checks that `[ptr, ptr+len)` lies in memory of `data_len` bytes, without touching it.
pub(crate) fn check(data_len: usize, ptr: u32, len: u32) -> Result<(), AbiError> {
    range(data_len, ptr, len).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_checked_without_overflow() {
        let mem = [0u8; 16];
        assert!(slice(&mem, 0, 16).is_ok());
        assert!(slice(&mem, 16, 0).is_ok());
        assert_eq!(slice(&mem, 8, 9), Err(AbiError::BadPointer { ptr: 8, len: 9, memory_len: 16 }));
        assert!(slice(&mem, u32::MAX, 2).is_err());
        assert!(slice(&mem, 17, 0).is_err());
    }
}
