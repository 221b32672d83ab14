//! Unwind rows from the modules' `.eh_frame` (DWARF call frame information), for stacks through
//! code built without frame pointers.
//!
//! The collector parses each module's `.eh_frame` with `gimli`, outside `malloc`, into a compact
//! sorted table of [`Row`]s: from an address on, where the canonical frame address (CFA) is
//! (`rsp` or `rbp` plus an offset) and where the return address and the caller's `rbp` were
//! saved (at an offset from the CFA). A rule this form cannot express makes the row a stop: the
//! walk ends there, marked truncated. Rows live in OS memory, are registered per executable
//! range and never freed; the unwinder ([`crate::unwind`]) finds a frame's row by binary search
//! and falls back to frame pointers where a module has none.

/// How a [`Row`] finds the caller's frame.
pub mod rule {
    /// No row here: fall back to frame pointers.
    pub const NONE: u8 = 0;
    /// CFA = `rsp` + offset.
    pub const CFA_RSP: u8 = 1;
    /// CFA = `rbp` + offset.
    pub const CFA_RBP: u8 = 2;
    /// A rule the table cannot express: the walk ends here, truncated.
    pub const STOP: u8 = 3;
    /// The outermost frame (the return address is undefined): the walk ends here, complete.
    pub const END: u8 = 4;
}

/// One unwind row, valid from `start` to the next row's start.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Row {
    /// First address the row covers.
    pub start: usize,
    /// CFA offset from the register [`Row::rule`] names.
    pub cfa_offset: i32,
    /// Where the return address is saved, from the CFA.
    pub ra_offset: i16,
    /// Where the caller's `rbp` is saved, from the CFA (0: not saved, `rbp` is unchanged).
    pub rbp_offset: i16,
    /// [`rule`].
    pub rule: u8,
}

/// The row covering `pc` in `rows` (sorted by start), if any.
pub fn find(rows: &[Row], pc: usize) -> Option<&Row> {
    let i = rows.partition_point(|r| r.start <= pc);
    rows.get(i.checked_sub(1)?).filter(|r| r.rule != rule::NONE)
}

#[cfg(feature = "hook")]
mod parse {
    use super::{Row, rule};
    use gimli::{
        BaseAddresses, CfaRule, CieOrFde, EhFrame, EhFrameHdr, LittleEndian, Pointer, Register,
        RegisterRule, UnwindContext, UnwindContextStorage, UnwindSection, UnwindTableRow, X86_64,
    };

    const PT_GNU_EH_FRAME: u32 = 0x6474_e550;

    /// The rows of the module `info`, sorted, or empty if it has no `.eh_frame_hdr` or it does
    /// not parse. Its functions are read in address order, from the `.eh_frame_hdr` search
    /// table, so that the rows come out nearly sorted (the sort after is then one pass, where
    /// it was a third of the work on libc's 28 k rows in file order); each CIE is parsed once.
    ///
    /// # Safety
    /// Inside a `dl_iterate_phdr` callback for `info` (the module stays loaded meanwhile).
    pub unsafe fn module_rows(info: &libc::dl_phdr_info) -> Vec<Row> {
        // SAFETY: forwarded.
        match unsafe { Sections::of(info) } {
            Some(sections) => {
                let mut rows = Vec::with_capacity(sections.rows_hint);
                if !sections.rows_in_address_order(&mut rows) {
                    rows.clear();
                    sections.rows_in_file_order::<FewRules>(&mut rows);
                }
                sorted(rows)
            }
            None => Vec::new(),
        }
    }

    type Slice = gimli::EndianSlice<'static, LittleEndian>;

    /// Room for an unwind row's register rules: 24, where `gimli`'s default has 192. x86-64's
    /// call frame information gives rules for its 16 general registers and the return address
    /// (17 at most); a function whose rules do not fit ends its rows there (an error from
    /// `next_row`), and is unwound by frame pointers past that point, as one without rows.
    /// gimli copies rule arrays as it builds a table (a `memmove` of 6 KiB at 192 was 5 % of a
    /// traced program's start-up samples): libc's 28 k rows took 1.10 ms instead of 1.27 (20
    /// parses each, warm), the rows the same.
    pub(super) struct FewRules;

    impl UnwindContextStorage<usize> for FewRules {
        type Rules = [(Register, RegisterRule<usize>); 24];
        type Stack = Box<[UnwindTableRow<usize, Self>; 4]>;
    }

    /// A loaded module's `.eh_frame` and `.eh_frame_hdr`.
    pub(super) struct Sections {
        hdr: gimli::ParsedEhFrameHdr<Slice>,
        eh_frame: EhFrame<Slice>,
        bases: BaseAddresses,
        /// About how many rows the module has: its search table holds 8 bytes a function, and
        /// a function has about 10 rows (28.6 k rows for libc's 23 KiB table).
        rows_hint: usize,
    }

    impl Sections {
        /// The sections of the module `info`, if it has them and they parse.
        ///
        /// # Safety
        /// Inside a `dl_iterate_phdr` callback for `info`; the sections are used only while
        /// the module stays loaded (the `'static` slices do not outlive the callback).
        pub(super) unsafe fn of(info: &libc::dl_phdr_info) -> Option<Self> {
            if !cfg!(target_arch = "x86_64") {
                return None;
            }
            // SAFETY: forwarded.
            let phdrs = unsafe { crate::module::program_headers(info) };
            let bias = info.dlpi_addr as usize;
            let hdr = phdrs.iter().find(|p| p.p_type == PT_GNU_EH_FRAME)?;
            let hdr_addr = bias.wrapping_add(hdr.p_vaddr as usize);
            // SAFETY: the segment is mapped with the module, which stays loaded while used.
            let hdr_bytes: &'static [u8] =
                unsafe { core::slice::from_raw_parts(hdr_addr as *const u8, hdr.p_memsz as usize) };
            let bases = BaseAddresses::default().set_eh_frame_hdr(hdr_addr as u64);
            let parsed = EhFrameHdr::new(hdr_bytes, LittleEndian)
                .parse(&bases, 8)
                .ok()?;
            let Pointer::Direct(eh) = parsed.eh_frame_ptr() else {
                return None;
            };
            let eh = eh as usize;
            // `.eh_frame` runs to a zero terminator within its loaded segment.
            let seg = phdrs.iter().find(|p| {
                let s = bias.wrapping_add(p.p_vaddr as usize);
                p.p_type == libc::PT_LOAD && s <= eh && eh < s + p.p_memsz as usize
            })?;
            let seg_end = bias.wrapping_add(seg.p_vaddr as usize) + seg.p_memsz as usize;
            // SAFETY: inside the loaded segment.
            let eh_bytes: &'static [u8] =
                unsafe { core::slice::from_raw_parts(eh as *const u8, seg_end - eh) };
            Some(Self {
                rows_hint: hdr_bytes.len() * 5 / 4,
                hdr: parsed,
                eh_frame: EhFrame::new(eh_bytes, LittleEndian),
                bases: bases.set_eh_frame(eh as u64),
            })
        }

        /// Appends the rows of every function the search table lists, in its (address) order;
        /// false if the module has no table or an entry does not parse (then `rows` holds
        /// part of them, for the caller to throw away).
        pub(super) fn rows_in_address_order(&self, rows: &mut Vec<Row>) -> bool {
            let Some(table) = self.hdr.table() else {
                return false;
            };
            let mut cies = Cies::default();
            let mut ctx = Box::new(UnwindContext::<usize, FewRules>::new_in());
            let mut entries = table.iter(&self.bases);
            loop {
                match entries.next() {
                    Ok(Some((_, fde))) => {
                        let Ok(offset) = table.pointer_to_offset(fde) else {
                            return false;
                        };
                        let Ok(fde) =
                            self.eh_frame
                                .fde_from_offset(&self.bases, offset, |eh, bases, at| {
                                    cies.get(eh, bases, at)
                                })
                        else {
                            return false;
                        };
                        self.fde_rows(&fde, &mut ctx, rows);
                    }
                    Ok(None) => return true,
                    Err(_) => return false,
                }
            }
        }

        /// Appends the rows of every function in `.eh_frame`, in the file's order, with room
        /// for an unwind row's rules as `S` has it ([`FewRules`]; the tests compare `gimli`'s
        /// default).
        pub(super) fn rows_in_file_order<S: UnwindContextStorage<usize>>(
            &self,
            rows: &mut Vec<Row>,
        ) {
            let mut cies = Cies::default();
            let mut ctx = Box::new(UnwindContext::<usize, S>::new_in());
            let mut entries = self.eh_frame.entries(&self.bases);
            while let Ok(Some(entry)) = entries.next() {
                let CieOrFde::Fde(partial) = entry else {
                    continue;
                };
                let Ok(fde) = partial.parse(|eh, bases, at| cies.get(eh, bases, at)) else {
                    continue;
                };
                self.fde_rows(&fde, &mut ctx, rows);
            }
        }

        /// Appends one function's rows, then a row of nothing known past its end (frame
        /// pointers), which a function starting there replaces.
        fn fde_rows<S: UnwindContextStorage<usize>>(
            &self,
            fde: &gimli::FrameDescriptionEntry<Slice>,
            ctx: &mut UnwindContext<usize, S>,
            rows: &mut Vec<Row>,
        ) {
            let Ok(mut table) = fde.rows(&self.eh_frame, &self.bases, ctx) else {
                return;
            };
            let mut end = 0;
            while let Ok(Some(r)) = table.next_row() {
                rows.push(convert(r));
                end = r.end_address() as usize;
            }
            rows.push(Row {
                start: end,
                ..Row::default()
            });
        }
    }

    /// The CIEs parsed so far, by offset: a module has a handful, shared by thousands of FDEs.
    #[derive(Default)]
    struct Cies(
        Vec<(
            gimli::EhFrameOffset<usize>,
            gimli::CommonInformationEntry<Slice>,
        )>,
    );

    impl Cies {
        fn get(
            &mut self,
            eh_frame: &EhFrame<Slice>,
            bases: &BaseAddresses,
            at: gimli::EhFrameOffset<usize>,
        ) -> gimli::Result<gimli::CommonInformationEntry<Slice>> {
            if let Some((_, cie)) = self.0.iter().find(|(o, _)| *o == at) {
                return Ok(cie.clone());
            }
            let cie = eh_frame.cie_from_offset(bases, at)?;
            self.0.push((at, cie.clone()));
            Ok(cie)
        }
    }

    /// `rows` sorted by start, one per start address. Rows of one function are in order; a
    /// marker of nothing known past a function that a function starting at the same address
    /// follows must give way to it: sorting puts NONE (0) first, and of a start address the
    /// last row is kept. A stable sort, so cheap on rows already in order.
    pub(super) fn sorted(mut rows: Vec<Row>) -> Vec<Row> {
        rows.sort_by_key(|r| (r.start, r.rule != rule::NONE));
        rows.dedup_by(|later, earlier| {
            // `later` comes after `earlier`; keep the last row of a start address.
            if later.start == earlier.start {
                *earlier = *later;
                true
            } else {
                false
            }
        });
        rows
    }

    fn convert<S: gimli::UnwindContextStorage<usize>>(r: &gimli::UnwindTableRow<usize, S>) -> Row {
        let stop = Row {
            start: r.start_address() as usize,
            rule: rule::STOP,
            ..Row::default()
        };
        let (rule, cfa_offset) = match *r.cfa() {
            CfaRule::RegisterAndOffset { register, offset } if register == X86_64::RSP => {
                (rule::CFA_RSP, offset)
            }
            CfaRule::RegisterAndOffset { register, offset } if register == X86_64::RBP => {
                (rule::CFA_RBP, offset)
            }
            _ => return stop,
        };
        let ra_offset = match r.register(X86_64::RA) {
            Some(RegisterRule::Offset(o)) => o,
            Some(RegisterRule::Undefined) => {
                return Row {
                    rule: rule::END,
                    ..stop
                };
            }
            _ => return stop,
        };
        let rbp_offset = match r.register(X86_64::RBP) {
            None | Some(RegisterRule::SameValue) => 0,
            Some(RegisterRule::Offset(o)) if o != 0 => o,
            _ => return stop,
        };
        let (Ok(cfa_offset), Ok(ra_offset), Ok(rbp_offset)) = (
            i32::try_from(cfa_offset),
            i16::try_from(ra_offset),
            i16::try_from(rbp_offset),
        ) else {
            return stop;
        };
        Row {
            start: r.start_address() as usize,
            cfa_offset,
            ra_offset,
            rbp_offset,
            rule,
        }
    }
}

#[cfg(feature = "hook")]
pub use parse::module_rows;

#[cfg(all(test, feature = "hook"))]
mod tests {
    use super::*;

    #[test]
    fn rows_are_found_by_address() {
        let rows = [
            Row {
                start: 0x100,
                rule: rule::CFA_RSP,
                cfa_offset: 8,
                ra_offset: -8,
                ..Row::default()
            },
            Row {
                start: 0x110,
                rule: rule::CFA_RSP,
                cfa_offset: 16,
                ra_offset: -8,
                ..Row::default()
            },
            Row {
                start: 0x140,
                ..Row::default()
            },
        ];
        assert_eq!(find(&rows, 0xff), None);
        assert_eq!(find(&rows, 0x100).map(|r| r.cfa_offset), Some(8));
        assert_eq!(find(&rows, 0x13f).map(|r| r.cfa_offset), Some(16));
        assert_eq!(find(&rows, 0x140), None, "past the function: no row");
    }

    /// Calls `f` with each loaded module, inside `dl_iterate_phdr` (the module stays loaded
    /// meanwhile). `f` must not panic: the tests assert after, outside the loader.
    fn each_module<F: FnMut(&libc::dl_phdr_info)>(mut f: F) {
        unsafe extern "C" fn each<G: FnMut(&libc::dl_phdr_info)>(
            info: *mut libc::dl_phdr_info,
            _size: libc::size_t,
            data: *mut libc::c_void,
        ) -> libc::c_int {
            // SAFETY: the loader passes a valid info; `data` is the `G` given below.
            unsafe { (*data.cast::<G>())(&*info) };
            0
        }
        // SAFETY: the callback only calls `f`, which never unwinds.
        unsafe { libc::dl_iterate_phdr(Some(each::<F>), (&raw mut f).cast()) };
    }

    #[test]
    fn rows_read_in_address_order_are_the_rows_of_the_file_order() {
        // Per module with sections: whether its table read whole, whether the two orders (and
        // the file order with gimli's default storage) gave the same rows and `module_rows`
        // those, and how many.
        let mut checked: Vec<(bool, bool, bool, usize)> = Vec::new();
        each_module(|info| {
            // SAFETY: inside the loader's iteration; the sections are used here only.
            let Some(sections) = (unsafe { parse::Sections::of(info) }) else {
                return;
            };
            let (mut by_address, mut by_file) = (Vec::new(), Vec::new());
            let whole = sections.rows_in_address_order(&mut by_address);
            sections.rows_in_file_order::<parse::FewRules>(&mut by_file);
            // And with gimli's default room for a row's rules (192): `FewRules` loses none.
            let mut by_default_room = Vec::new();
            sections.rows_in_file_order::<gimli::StoreOnHeap>(&mut by_default_room);
            let by_address = parse::sorted(by_address);
            let same = by_address == parse::sorted(by_file)
                && by_address == parse::sorted(by_default_room);
            // SAFETY: inside the loader's iteration.
            let module = by_address == unsafe { module_rows(info) };
            checked.push((whole, same, module, by_address.len()));
        });
        // This test binary, libc, libgcc_s and the loader at least.
        assert!(checked.len() >= 3, "{checked:?}");
        assert!(
            checked.iter().map(|c| c.3).sum::<usize>() > 10_000,
            "{checked:?}"
        );
        for &(whole, same, module, _) in &checked {
            assert!(whole && same && module, "{checked:?}");
        }
    }

    #[test]
    fn this_programs_own_rows_parse() {
        let mut rows: Vec<Row> = Vec::new();
        // SAFETY: inside the loader's iteration.
        each_module(|info| rows.extend(unsafe { module_rows(info) }));
        rows.sort_by_key(|r| r.start);
        assert!(rows.len() > 1000, "{} rows", rows.len());
        // This very function has a row, with the CFA on rsp or rbp and the return address just
        // below it.
        let f = this_programs_own_rows_parse as *const () as usize;
        let r = find(&rows, f + 4).expect("a row for this function");
        assert!(r.rule == rule::CFA_RSP || r.rule == rule::CFA_RBP);
        assert_eq!(r.ra_offset, -8);
    }
}
