// SPDX-License-Identifier: GPL-2.0
//! stub
use crate::aging::{AgeOp, AgeResult};
use crate::pgtable::*;
use crate::prim::AllocError;
use core::marker::PhantomData;
pub(crate) const MAP_MIN_TABLES: usize = 3;
#[derive(Clone, Copy)]
pub(crate) struct S2Root(u64);
pub(crate) struct S2Mmu<P: PageOps>(PhantomData<P>);
impl<P: PageOps> S2Mmu<P> {
    pub(crate) fn new(_n: usize, _ia: u32, _af: bool) -> Result<Self, AllocError> { Err(AllocError) }
    pub(crate) fn hw_af(&self) -> bool { true }
    pub(crate) fn root(&self, _r: usize) -> Option<S2Root> { None }
    pub(crate) fn table_pages(&self) -> u64 { 0 }
    pub(crate) fn map(&self, _root: usize, _gfn: u64, _pfn: u64, _w: bool, _l: MapLevel, _t: &mut TableCache<P>, _f: &dyn Fn()) -> Result<MapOutcome, MapError> { Err(MapError::BadLevel) }
    pub(crate) fn mkyoung(&self, _root: usize, _gfn: u64, _w: bool) -> bool { false }
    pub(crate) fn age_gfn_range(&self, _s: u64, _e: u64, op: AgeOp) -> AgeResult { AgeResult::new(op) }
    pub(crate) fn zap_gfn_range_step(&mut self, _c: &mut ZapCursor, _e: u64, _s: &mut dyn FnMut() -> bool) -> ZapProgress { ZapProgress::default() }
    pub(crate) fn zap_all(&mut self) -> u64 { 0 }
    pub(crate) fn snapshot(&self, _r: usize, _g: u64) -> u8 { 0 }
}
pub(crate) unsafe fn translate<P: PageOps>(_r: S2Root, _g: u64, _w: bool, _af: bool) -> Result<Translation, WalkFault> { Err(WalkFault::NotPresent) }
