//! Counters allocated at the first count.
//!
//! Contract: [`Lazy<T>`] reads as `T::default()` until [`Lazy::get`] is
//! first asked for it mutably; only then is a `T` allocated (and kept).
//! Most connections count nothing (no loss, no leniency), and tens of bytes
//! of zeros per direction add up over a million connections.

#[derive(Debug, Default)]
pub(crate) struct Lazy<T>(Option<Box<T>>);

impl<T: Default> Lazy<T> {
    /// The counters, allocated now if they were not.
    pub(crate) fn get(&mut self) -> &mut T {
        self.0.get_or_insert_with(Box::default)
    }
}

impl<T> Lazy<T> {
    /// The counters, if anything was counted.
    pub(crate) fn peek(&self) -> Option<&T> {
        self.0.as_deref()
    }

    /// Heap bytes held: a `T` once allocated, else nothing.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.0.as_ref().map_or(0, |_| std::mem::size_of::<T>())
    }
}
