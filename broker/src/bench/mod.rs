//! `broker bench`: the mode trade-off matrix (modes x region sizes x access patterns x readers) with a
//! native baseline on the same mapping, measured in the same run.
