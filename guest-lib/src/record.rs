//! Typed access to the members of records stored in a region, so a handle reaches a struct's fields
//! without the app computing byte offsets or copying the whole struct.
//!
//! A handle cannot be dereferenced: in handle mode every access is a host call. A [`Member`] says
//! where one member of a record type lies and what type it has (made by [`member!`] from the struct
//! and the member's name, so the offset comes from the compiler, not from the app's arithmetic), and
//! reads or writes exactly that member in one checked call. Several members of one record go in one
//! call too ([`Region::get_members`], [`Region::set_members`]): a tuple of members becomes one vectored
//! host call, whose reads all come from one state of the region and whose writes land as one change.
//!
//! The same members work on a [`View`], whatever the region's mode: in handle mode they are host calls
//! as above, in mirror and shared mode plain loads and stores (in shared mode each member separately:
//! another app's write may land between two of them). A write the capability does not allow is
//! refused before any bounds check in handle and shared mode, and at the commit in mirror mode, as
//! every mirror write is.

use core::marker::PhantomData;

use bytemuck::{Pod, Zeroable};

use crate::{Error, Region, Result, View};

/// One member of type `T` of a record type `R`: its byte offset within `R`.
///
/// Made by [`member!`] (`member!(Reading, celsius)`), which takes the offset and the type from the
/// compiler, so the app does no offset arithmetic and a member cannot be read as another type. (The
/// record's own offset in the region is the app's to give; the broker checks every access anyway.)
pub struct Member<R, T> {
    offset: u64,
    _types: PhantomData<fn(R) -> T>,
}

impl<R, T> Clone for Member<R, T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<R, T> Copy for Member<R, T> {}

impl<R, T> core::fmt::Debug for Member<R, T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Member")
            .field("record", &core::any::type_name::<R>())
            .field("type", &core::any::type_name::<T>())
            .field("offset", &self.offset)
            .finish()
    }
}

/// Makes the [`Member`] for `record_type.member` (nested members too: `member!(Frame, header.len)`;
/// packed records too, since the member's type is taken from a by-value projection).
///
/// ```ignore
/// #[derive(Clone, Copy, Pod, Zeroable)]
/// #[repr(C)]
/// struct Reading { celsius: f32, seq: u32 }
/// const SEQ: Member<Reading, u32> = member!(Reading, seq);
/// let seq = SEQ.get(&region, record_offset)?;
/// ```
#[macro_export]
macro_rules! member {
    ($record:ty, $($member:tt).+) => {
        $crate::Member::<$record, _>::__new(
            ::core::mem::offset_of!($record, $($member).+),
            |r: $record| r.$($member).+,
        )
    };
}

impl<R: Pod, T: Pod> Member<R, T> {
    /// Used by [`member!`]: the offset comes from `offset_of!`, and the projection only fixes `T`.
    #[doc(hidden)]
    #[must_use]
    pub const fn __new(offset: usize, _projection: fn(R) -> T) -> Member<R, T> {
        // A usize always fits in a u64 on the targets this crate supports (wasm32, and 64-bit hosts).
        Member { offset: offset as u64, _types: PhantomData }
    }

    /// The member's byte offset within its record.
    #[must_use]
    pub const fn offset(self) -> u64 {
        self.offset
    }

    /// Where this member lies in a region whose record starts at byte `record`.
    ///
    /// # Errors
    /// `OutOfBounds` if the sum overflows (the broker checks the rest).
    pub fn at(self, record: u64) -> Result<u64> {
        record.checked_add(self.offset).ok_or(Error::OutOfBounds)
    }

    /// Reads this member of the record at byte `record` of `region`: one host call of `size_of::<T>()`
    /// bytes.
    ///
    /// # Errors
    /// As [`Region::read`].
    pub fn get(self, region: &Region, record: u64) -> Result<T> {
        region.load(self.at(record)?)
    }

    /// Writes this member of the record at byte `record` of `region`, and nothing else of it: one host
    /// call.
    ///
    /// # Errors
    /// As [`Region::write`].
    pub fn set(self, region: &Region, record: u64, value: &T) -> Result<()> {
        region.store(self.at(record)?, value)
    }

    /// Reads this member of the record at byte `record` through `view`, whatever its mode.
    ///
    /// # Errors
    /// As [`View::load`].
    pub fn load(self, view: &View<'_>, record: u64) -> Result<T> {
        view.load(self.at(record)?)
    }

    /// Writes this member of the record at byte `record` through `view` (in mirror mode: locally, until
    /// [`View::commit`]).
    ///
    /// # Errors
    /// As [`View::store`].
    pub fn store(self, view: &mut View<'_>, record: u64, value: &T) -> Result<()> {
        view.store(self.at(record)?, value)
    }
}

/// Several members of one record type, read or written together: a tuple of [`Member`]s of up to
/// eight members, whose values are the tuple of their types.
pub trait Members<R>: Copy {
    /// The members' values, in order.
    type Values;

    /// Reads every member of the record at `record` of `region` in one host call.
    ///
    /// # Errors
    /// As [`Region::read_vectored`].
    fn get(self, region: &Region, record: u64) -> Result<Self::Values>;

    /// Writes every member of the record at `record` of `region` in one host call, as one change.
    ///
    /// # Errors
    /// As [`Region::write_vectored`].
    fn set(self, region: &Region, record: u64, values: &Self::Values) -> Result<()>;

    /// Reads every member through `view` (one host call in handle mode).
    ///
    /// # Errors
    /// As [`View::load`].
    fn load(self, view: &View<'_>, record: u64) -> Result<Self::Values>;

    /// Writes every member through `view` (one host call in handle mode; in mirror mode locally, until
    /// [`View::commit`]).
    ///
    /// # Errors
    /// As [`View::store`].
    fn store(self, view: &mut View<'_>, record: u64, values: &Self::Values) -> Result<()>;
}

macro_rules! members {
    ($($m:ident $t:ident $i:tt),+) => {
        impl<R: Pod, $($t: Pod),+> Members<R> for ($(Member<R, $t>,)+) {
            type Values = ($($t,)+);

            fn get(self, region: &Region, record: u64) -> Result<Self::Values> {
                let mut values: Self::Values = ($(<$t as Zeroable>::zeroed(),)+);
                let ($($m,)+) = self;
                region.read_vectored(&mut [$(($m.at(record)?, bytemuck::bytes_of_mut(&mut values.$i)),)+])?;
                Ok(values)
            }

            fn set(self, region: &Region, record: u64, values: &Self::Values) -> Result<()> {
                let ($($m,)+) = self;
                region.write_vectored(&[$(($m.at(record)?, bytemuck::bytes_of(&values.$i)),)+])
            }

            fn load(self, view: &View<'_>, record: u64) -> Result<Self::Values> {
                if let View::Handle(region) = view {
                    return self.get(region, record);
                }
                let ($($m,)+) = self;
                Ok(($($m.load(view, record)?,)+))
            }

            fn store(self, view: &mut View<'_>, record: u64, values: &Self::Values) -> Result<()> {
                if let View::Handle(region) = view {
                    return self.set(region, record, values);
                }
                // Refused as handle mode refuses: rights before bounds, and every member checked before
                // any is stored, as a vectored write checks every entry first.
                if let View::SharedReadOnly(_) = view {
                    return Err(Error::PermissionDenied);
                }
                let ($($m,)+) = self;
                $( view.check_local($m.at(record)?, core::mem::size_of::<$t>())?; )+
                $( $m.store(view, record, &values.$i)?; )+
                Ok(())
            }
        }
    };
}

members!(a A 0);
members!(a A 0, b B 1);
members!(a A 0, b B 1, c C 2);
members!(a A 0, b B 1, c C 2, d D 3);
members!(a A 0, b B 1, c C 2, d D 3, e E 4);
members!(a A 0, b B 1, c C 2, d D 3, e E 4, f F 5);
members!(a A 0, b B 1, c C 2, d D 3, e E 4, f F 5, g G 6);
members!(a A 0, b B 1, c C 2, d D 3, e E 4, f F 5, g G 6, h H 7);

impl Region {
    /// Reads several members of the record at byte `record` in one host call (see [`Members`]); all
    /// come from one state of the region.
    ///
    /// # Errors
    /// As [`Region::read_vectored`]; nothing is read if any member is refused.
    pub fn get_members<R, M: Members<R>>(&self, record: u64, members: M) -> Result<M::Values> {
        members.get(self, record)
    }

    /// Writes several members of the record at byte `record` in one host call, as one change with one
    /// version.
    ///
    /// # Errors
    /// As [`Region::write_vectored`]; nothing is written if any member is refused.
    pub fn set_members<R, M: Members<R>>(&self, record: u64, members: M, values: &M::Values) -> Result<()> {
        members.set(self, record, values)
    }
}

#[cfg(test)]
mod tests {
    use super::Member;
    use crate::Error;

    #[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
    #[repr(C)]
    struct Inner {
        a: u16,
        b: u16,
    }

    #[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
    #[repr(C)]
    struct Outer {
        x: u32,
        inner: Inner,
        tail: [u8; 8],
    }

    const TAIL: Member<Outer, [u8; 8]> = member!(Outer, tail);

    #[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
    #[repr(C, packed)]
    struct Wire {
        tag: u8,
        len: u32,
    }

    #[test]
    fn packed_records_have_members_too() {
        let len: Member<Wire, u32> = member!(Wire, len);
        assert_eq!(len.offset(), 1);
    }

    #[test]
    fn members_take_the_compilers_offsets_nested_ones_too() {
        assert_eq!(member!(Outer, x).offset(), 0);
        assert_eq!(member!(Outer, inner.b).offset(), 6, "x (4) + inner.a (2)");
        assert_eq!(TAIL.offset(), 8);
        let b: Member<Outer, u16> = member!(Outer, inner.b);
        assert_eq!(b.at(100), Ok(106));
    }

    #[test]
    fn a_record_offset_that_overflows_is_out_of_bounds() {
        assert_eq!(TAIL.at(u64::MAX - 8), Ok(u64::MAX), "the sum just fits");
        assert_eq!(TAIL.at(u64::MAX - 7), Err(Error::OutOfBounds));
        assert_eq!(TAIL.at(u64::MAX), Err(Error::OutOfBounds));
    }
}
