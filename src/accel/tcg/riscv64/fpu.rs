//! Floating-point arithmetic for the RISC-V F (single) and D (double)
//! extensions, in software.
//!
//! The host FPU cannot be used directly: SSE has no round-to-nearest,
//! ties-to-max-magnitude mode (RISC-V `rmm`), and Rust gives no safe access
//! to MXCSR to change the rounding mode or read the exception flags. No
//! soft-float crate is used either: `rustc_apfloat` has no square root and
//! none of RISC-V's NaN rules, and checking a general soft-float crate's
//! platform options against every RISC-V rule would be more work than the
//! code below, which keeps those rules explicit and in one place.
//!
//! The approach is deliberately simple: every operation unpacks its operands
//! to sign / integer significand / exponent, computes the exact result in
//! wide integers (`u128`), or, for division and square root, enough quotient
//! bits plus a sticky bit, and hands it to one shared rounding routine
//! (`round_pack`).
//!
//! RISC-V specific rules implemented here:
//!
//! * **NaN boxing.** A single-precision value lives in the low 32 bits of a
//!   64-bit f register whose upper 32 bits are all ones. An operand that is
//!   not properly boxed reads as the canonical NaN ([`unbox_single`]); every
//!   single result is boxed ([`box_single`]).
//! * **No NaN payload propagation.** Any arithmetic result that is a NaN is
//!   the canonical NaN (`0x7fc00000` / `0x7ff8000000000000`). Only the sign
//!   injection instructions (and moves, which are not here) move NaN bits.
//! * **Flags.** `NV` for invalid operations and for any signalling NaN
//!   operand of an arithmetic operation; `DZ` for a finite non-zero value
//!   divided by zero; `OF` (always together with `NX`) on overflow; `UF` when
//!   the result is tiny *after rounding* (i.e. the result rounded as if the
//!   exponent range were unbounded is below the smallest normal number) and
//!   also inexact; `NX` when the delivered result differs from the exact one.
//!   A fused multiply-add of `0 * inf` raises `NV` even when the addend is a
//!   quiet NaN.
//! * **`fmin`/`fmax`** follow IEEE 754-2019 minimumNumber/maximumNumber:
//!   `-0 < +0`, a single NaN operand is ignored, two NaNs give the canonical
//!   NaN, and only signalling NaNs raise `NV`.
//! * **Float to integer** conversions saturate: NaN and `+inf` give the
//!   largest value of the target type, `-inf` the smallest; any out-of-range
//!   input raises `NV` (and not `NX`). 32-bit results, including unsigned
//!   ones, are sign-extended to 64 bits as `fcvt.w[u].*` write them.

/// Inexact.
pub const NX: u8 = 1;
/// Underflow.
pub const UF: u8 = 2;
/// Overflow.
pub const OF: u8 = 4;
/// Divide by zero.
pub const DZ: u8 = 8;
/// Invalid operation.
pub const NV: u8 = 16;

/// Rounding mode, as encoded in the `rm` field and in `frm`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rounding {
    /// Round to nearest, ties to even (`rne`, 0).
    Rne,
    /// Round towards zero (`rtz`, 1).
    Rtz,
    /// Round down, towards negative infinity (`rdn`, 2).
    Rdn,
    /// Round up, towards positive infinity (`rup`, 3).
    Rup,
    /// Round to nearest, ties to max magnitude (`rmm`, 4).
    Rmm,
}

impl Rounding {
    /// Decodes a rounding mode. 0..=4 are the five modes; 5 and 6 are
    /// reserved and 7 means "dynamic" (use `frm`), which the caller must
    /// resolve before calling; all three give `None`, which the caller treats
    /// as an illegal instruction.
    pub fn from_bits(rm: u8) -> Option<Rounding> {
        match rm {
            0 => Some(Rounding::Rne),
            1 => Some(Rounding::Rtz),
            2 => Some(Rounding::Rdn),
            3 => Some(Rounding::Rup),
            4 => Some(Rounding::Rmm),
            _ => None,
        }
    }
}

/// Which format an operation works on: F (single) or D (double).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    /// IEEE binary32, NaN-boxed in a 64-bit register.
    Single,
    /// IEEE binary64.
    Double,
}

/// Integer side of a conversion.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IntKind {
    /// 32-bit signed (`.w`).
    W,
    /// 32-bit unsigned (`.wu`).
    Wu,
    /// 64-bit signed (`.l`).
    L,
    /// 64-bit unsigned (`.lu`).
    Lu,
}

/// Sign-injection flavour.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignInject {
    /// `fsgnj`: the sign of `b`.
    Copy,
    /// `fsgnjn`: the opposite of the sign of `b`.
    Negate,
    /// `fsgnjx`: the sign of `a` xor the sign of `b`.
    Xor,
}

/// Result of an operation: the value to write back (an f register for
/// floating-point results, an x register for comparisons, `fclass` and
/// float-to-integer conversions) and the flags to OR into `fflags`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FpOut {
    pub bits: u64,
    pub flags: u8,
}

const CANONICAL_NAN_S: u32 = 0x7fc0_0000;

/// NaN-boxes a single-precision value: the upper 32 bits are all ones.
pub fn box_single(v: u32) -> u64 {
    0xffff_ffff_0000_0000 | u64::from(v)
}

/// Reads a single-precision operand from a 64-bit register. A value that is
/// not properly NaN-boxed (upper 32 bits not all ones) reads as the
/// canonical NaN.
pub fn unbox_single(reg: u64) -> u32 {
    if reg >> 32 == 0xffff_ffff {
        reg as u32
    } else {
        CANONICAL_NAN_S
    }
}

// ---------------------------------------------------------------------------
// Formats and unpacking
// ---------------------------------------------------------------------------

/// Field widths of a binary interchange format.
#[derive(Clone, Copy)]
struct Fmt {
    exp_bits: u32,
    man_bits: u32,
}

impl Fmt {
    fn of(p: Precision) -> Fmt {
        match p {
            Precision::Single => Fmt {
                exp_bits: 8,
                man_bits: 23,
            },
            Precision::Double => Fmt {
                exp_bits: 11,
                man_bits: 52,
            },
        }
    }

    fn bias(self) -> i32 {
        (1 << (self.exp_bits - 1)) - 1
    }

    /// Exponent of the smallest normal number (-126 / -1022).
    fn emin(self) -> i32 {
        1 - self.bias()
    }

    /// Exponent of the least significant bit of a subnormal (-149 / -1074).
    fn qmin(self) -> i32 {
        self.emin() - self.man_bits as i32
    }

    /// Significand width including the implicit bit (24 / 53).
    fn precision(self) -> u32 {
        self.man_bits + 1
    }

    /// All-ones biased exponent.
    fn exp_max(self) -> u64 {
        (1 << self.exp_bits) - 1
    }

    fn man_mask(self) -> u64 {
        (1 << self.man_bits) - 1
    }

    fn sign_bit(self) -> u64 {
        1 << (self.exp_bits + self.man_bits)
    }

    fn quiet_bit(self) -> u64 {
        1 << (self.man_bits - 1)
    }

    fn signed(self, sign: bool) -> u64 {
        if sign {
            self.sign_bit()
        } else {
            0
        }
    }

    fn sign_of(self, bits: u64) -> bool {
        bits & self.sign_bit() != 0
    }

    fn zero(self, sign: bool) -> u64 {
        self.signed(sign)
    }

    fn inf(self, sign: bool) -> u64 {
        self.signed(sign) | self.exp_max() << self.man_bits
    }

    fn max_finite(self, sign: bool) -> u64 {
        self.signed(sign) | (self.exp_max() - 1) << self.man_bits | self.man_mask()
    }

    fn canonical_nan(self) -> u64 {
        self.exp_max() << self.man_bits | self.quiet_bit()
    }
}

/// Reads an operand: singles are unboxed, doubles taken as they are.
fn load(p: Precision, reg: u64) -> u64 {
    match p {
        Precision::Single => u64::from(unbox_single(reg)),
        Precision::Double => reg,
    }
}

/// Writes a result: singles are NaN-boxed.
fn store(p: Precision, bits: u64) -> u64 {
    match p {
        Precision::Single => box_single(bits as u32),
        Precision::Double => bits,
    }
}

fn out(p: Precision, (bits, flags): (u64, u8)) -> FpOut {
    FpOut {
        bits: store(p, bits),
        flags,
    }
}

/// An unpacked operand. Finite non-zero values are `sig * 2^exp` exactly,
/// with `sig` the integer significand (implicit bit included for normals).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Val {
    Nan { signalling: bool },
    Inf { sign: bool },
    Zero { sign: bool },
    Finite { sign: bool, exp: i32, sig: u64 },
}

impl Val {
    fn is_nan(self) -> bool {
        matches!(self, Val::Nan { .. })
    }

    fn is_snan(self) -> bool {
        matches!(self, Val::Nan { signalling: true })
    }
}

fn unpack(f: Fmt, bits: u64) -> Val {
    let sign = f.sign_of(bits);
    let biased = (bits >> f.man_bits) & f.exp_max();
    let man = bits & f.man_mask();
    if biased == f.exp_max() {
        if man == 0 {
            Val::Inf { sign }
        } else {
            Val::Nan {
                signalling: man & f.quiet_bit() == 0,
            }
        }
    } else if biased == 0 {
        if man == 0 {
            Val::Zero { sign }
        } else {
            Val::Finite {
                sign,
                exp: f.qmin(),
                sig: man,
            }
        }
    } else {
        Val::Finite {
            sign,
            exp: biased as i32 - f.bias() - f.man_bits as i32,
            sig: man | 1 << f.man_bits,
        }
    }
}

/// If any operand is a NaN the result is the canonical NaN, with `NV` when
/// one of them is signalling.
fn nan_operands(f: Fmt, vals: &[Val]) -> Option<(u64, u8)> {
    if vals.iter().any(|v| v.is_nan()) {
        let flags = if vals.iter().any(|v| v.is_snan()) {
            NV
        } else {
            0
        };
        Some((f.canonical_nan(), flags))
    } else {
        None
    }
}

fn invalid(f: Fmt) -> (u64, u8) {
    (f.canonical_nan(), NV)
}

/// The sign of an exact zero sum of operands with signs `a` and `b`: the
/// common sign if they agree, else +0 except -0 when rounding down.
fn zero_sum_sign(a: bool, b: bool, rm: Rounding) -> bool {
    if a == b {
        a
    } else {
        rm == Rounding::Rdn
    }
}

// ---------------------------------------------------------------------------
// Rounding
// ---------------------------------------------------------------------------

fn bit_len(x: u128) -> i32 {
    128 - x.leading_zeros() as i32
}

/// Drops the low `shift` bits of `sig` (plus a `sticky` fraction below them)
/// and rounds the kept part to an integer according to `rm`. Returns the
/// rounded integer (which may have gained a bit) and whether anything
/// non-zero was dropped.
fn round_shift(sig: u128, sticky: bool, shift: u32, sign: bool, rm: Rounding) -> (u128, bool) {
    let (kept, round, rest) = match shift {
        0 => (sig, false, sticky),
        1..=127 => (
            sig >> shift,
            (sig >> (shift - 1)) & 1 == 1,
            sig & ((1u128 << (shift - 1)) - 1) != 0 || sticky,
        ),
        128 => (0, sig >> 127 == 1, sig << 1 != 0 || sticky),
        _ => (0, false, sig != 0 || sticky),
    };
    let inexact = round || rest;
    let up = match rm {
        Rounding::Rne => round && (rest || kept & 1 == 1),
        Rounding::Rmm => round,
        Rounding::Rtz => false,
        Rounding::Rdn => inexact && sign,
        Rounding::Rup => inexact && !sign,
    };
    (kept + u128::from(up), inexact)
}

/// Rounds the value `(-1)^sign * (sig + s) * 2^exp` to format `f`, where
/// `s` is some fraction strictly between 0 and 1 when `sticky` is set and 0
/// otherwise, and packs it. `sig` must be non-zero; when `sticky` is set it
/// must have at least `precision + 2` bits so that the sticky fraction lies
/// below the rounding bit.
///
/// Underflow is detected after rounding: the result is tiny when the value
/// rounded to the format's precision with an unbounded exponent range is
/// below the smallest normal number; `UF` is raised only if it is also
/// inexact.
fn round_pack(f: Fmt, sign: bool, exp: i32, sig: u128, sticky: bool, rm: Rounding) -> (u64, u8) {
    if sig == 0 {
        // Not reachable from the operations below; keep it total anyway.
        return (f.zero(sign), if sticky { NX | UF } else { 0 });
    }
    let (mut exp, mut sig) = (exp, sig);
    let p = f.precision() as i32;
    let man = f.man_bits as i32;
    if !sticky && bit_len(sig) < p + 2 {
        let k = p + 2 - bit_len(sig);
        sig <<= k;
        exp -= k;
    }
    // Exponent of the most significant bit of the exact value.
    let top = exp + bit_len(sig) - 1;
    // Exponent of the least significant bit of the result.
    let q = (top - man).max(f.qmin());
    let (mut kept, inexact) = round_shift(sig, sticky, (q - exp).max(0) as u32, sign, rm);
    let mut q = q;
    if kept >> p != 0 {
        // Rounding carried into a new bit: 1.11..1 became 10.00..0.
        kept >>= 1;
        q += 1;
    }

    let mut flags = if inexact { NX } else { 0 };
    if inexact && top < f.emin() {
        // Tininess after rounding: round to full precision with an unbounded
        // exponent; only a carry up to exactly 2^emin makes it not tiny.
        let (wide, _) = round_shift(sig, sticky, (top - man - exp).max(0) as u32, sign, rm);
        let reaches_normal = top + 1 == f.emin() && wide >> p != 0;
        if !reaches_normal {
            flags |= UF;
        }
    }

    let biased = if kept >> f.man_bits != 0 {
        i64::from(q - f.qmin() + 1)
    } else {
        0 // subnormal or zero
    };
    if biased >= f.exp_max() as i64 {
        let to_inf = match rm {
            Rounding::Rne | Rounding::Rmm => true,
            Rounding::Rtz => false,
            Rounding::Rdn => sign,
            Rounding::Rup => !sign,
        };
        let bits = if to_inf {
            f.inf(sign)
        } else {
            f.max_finite(sign)
        };
        return (bits, OF | NX);
    }
    let bits = f.signed(sign) | (biased as u64) << f.man_bits | (kept as u64 & f.man_mask());
    (bits, flags)
}

// ---------------------------------------------------------------------------
// Exact sums
// ---------------------------------------------------------------------------

/// A finite non-zero value `(-1)^sign * sig * 2^exp`; `sig` has at most 106
/// bits (a product of two double significands).
#[derive(Clone, Copy)]
struct Term {
    sign: bool,
    exp: i32,
    sig: u128,
}

impl Term {
    fn from_val(v: Val) -> Option<Term> {
        match v {
            Val::Finite { sign, exp, sig } => Some(Term {
                sign,
                exp,
                sig: u128::from(sig),
            }),
            _ => None,
        }
    }

    fn top(self) -> i32 {
        self.exp + bit_len(self.sig)
    }
}

/// Adds two terms and rounds once. The larger term is placed with its
/// leading bit at bit 125 of a `u128`; the other is aligned to it, and
/// whatever falls off the bottom becomes a sticky bit. Bits are only lost
/// when the smaller term lies entirely more than ~19 bits below the larger
/// one, so there is no cancellation in that case and the sum keeps at least
/// 124 significant bits, well above what the sticky rule needs.
fn add_terms(f: Fmt, x: Term, y: Term, rm: Rounding) -> (u64, u8) {
    let (x, y) = if y.top() > x.top() { (y, x) } else { (x, y) };
    let shift = 125 - (bit_len(x.sig) - 1);
    let xs = x.sig << shift;
    let exp = x.exp - shift;
    let (ys, lost) = if y.exp >= exp {
        (y.sig << (y.exp - exp), false)
    } else {
        let d = exp - y.exp;
        if d >= 128 {
            (0, true)
        } else {
            (y.sig >> d, y.sig & ((1u128 << d) - 1) != 0)
        }
    };
    let (sign, sig) = if x.sign == y.sign {
        (x.sign, xs + ys)
    } else if lost {
        // x - (ys + s) = (x - ys - 1) + (1 - s), and 0 < 1 - s < 1.
        (x.sign, xs - ys - 1)
    } else if xs > ys {
        (x.sign, xs - ys)
    } else if ys > xs {
        (y.sign, ys - xs)
    } else {
        return (f.zero(rm == Rounding::Rdn), 0);
    };
    round_pack(f, sign, exp, sig, lost, rm)
}

// ---------------------------------------------------------------------------
// Arithmetic on unboxed bit patterns
// ---------------------------------------------------------------------------

fn add_raw(f: Fmt, x: u64, y: u64, rm: Rounding) -> (u64, u8) {
    let (a, b) = (unpack(f, x), unpack(f, y));
    if let Some(r) = nan_operands(f, &[a, b]) {
        return r;
    }
    match (a, b) {
        (Val::Inf { sign: sa }, Val::Inf { sign: sb }) => {
            if sa == sb {
                (f.inf(sa), 0)
            } else {
                invalid(f)
            }
        }
        (Val::Inf { sign }, _) | (_, Val::Inf { sign }) => (f.inf(sign), 0),
        (Val::Zero { sign: sa }, Val::Zero { sign: sb }) => (f.zero(zero_sum_sign(sa, sb, rm)), 0),
        (Val::Zero { .. }, _) => (y, 0),
        (_, Val::Zero { .. }) => (x, 0),
        _ => match (Term::from_val(a), Term::from_val(b)) {
            (Some(ta), Some(tb)) => add_terms(f, ta, tb, rm),
            _ => invalid(f), // unreachable: both are finite non-zero here
        },
    }
}

fn mul_raw(f: Fmt, x: u64, y: u64, rm: Rounding) -> (u64, u8) {
    let (a, b) = (unpack(f, x), unpack(f, y));
    if let Some(r) = nan_operands(f, &[a, b]) {
        return r;
    }
    let sign = f.sign_of(x) != f.sign_of(y);
    match (a, b) {
        (Val::Inf { .. }, Val::Zero { .. }) | (Val::Zero { .. }, Val::Inf { .. }) => invalid(f),
        (Val::Inf { .. }, _) | (_, Val::Inf { .. }) => (f.inf(sign), 0),
        (Val::Zero { .. }, _) | (_, Val::Zero { .. }) => (f.zero(sign), 0),
        (
            Val::Finite {
                exp: ea, sig: sa, ..
            },
            Val::Finite {
                exp: eb, sig: sb, ..
            },
        ) => round_pack(f, sign, ea + eb, u128::from(sa) * u128::from(sb), false, rm),
        _ => invalid(f), // unreachable: NaNs handled above
    }
}

fn div_raw(f: Fmt, x: u64, y: u64, rm: Rounding) -> (u64, u8) {
    let (a, b) = (unpack(f, x), unpack(f, y));
    if let Some(r) = nan_operands(f, &[a, b]) {
        return r;
    }
    let sign = f.sign_of(x) != f.sign_of(y);
    match (a, b) {
        (Val::Inf { .. }, Val::Inf { .. }) | (Val::Zero { .. }, Val::Zero { .. }) => invalid(f),
        (Val::Inf { .. }, _) => (f.inf(sign), 0),
        (_, Val::Inf { .. }) => (f.zero(sign), 0),
        (Val::Zero { .. }, _) => (f.zero(sign), 0),
        (_, Val::Zero { .. }) => (f.inf(sign), DZ),
        (
            Val::Finite {
                exp: ea, sig: sa, ..
            },
            Val::Finite {
                exp: eb, sig: sb, ..
            },
        ) => {
            // Dividend with its leading bit at bit 127, divisor at bit 63:
            // the quotient has 64 or 65 bits, the remainder gives the sticky.
            let (sa, sb) = (u128::from(sa), u128::from(sb));
            let ka = 128 - bit_len(sa);
            let kb = 64 - bit_len(sb);
            let (n, d) = (sa << ka, sb << kb);
            let quot = n / d;
            let sticky = n % d != 0;
            round_pack(f, sign, (ea - ka) - (eb - kb), quot, sticky, rm)
        }
        _ => invalid(f), // unreachable: NaNs handled above
    }
}

fn sqrt_raw(f: Fmt, x: u64, rm: Rounding) -> (u64, u8) {
    let a = unpack(f, x);
    if let Some(r) = nan_operands(f, &[a]) {
        return r;
    }
    match a {
        Val::Zero { .. } => (x, 0), // sqrt(-0) = -0
        Val::Inf { sign: false } => (x, 0),
        Val::Inf { sign: true } | Val::Finite { sign: true, .. } => invalid(f),
        Val::Finite { exp, sig, .. } => {
            // Leading bit at 126 or 127 so that the exponent is even; the
            // integer square root then has 64 bits.
            let sig = u128::from(sig);
            let mut k = 127 - bit_len(sig);
            if (exp - k) % 2 != 0 {
                k += 1;
            }
            let radicand = sig << k;
            let root = radicand.isqrt();
            let sticky = root * root != radicand;
            round_pack(f, false, (exp - k) / 2, root, sticky, rm)
        }
        Val::Nan { .. } => invalid(f), // unreachable: handled above
    }
}

/// `(-1)^np * a * b + (-1)^nc * c` with a single rounding.
fn fma_raw(
    f: Fmt,
    (x, y, z): (u64, u64, u64),
    negate_product: bool,
    negate_addend: bool,
    rm: Rounding,
) -> (u64, u8) {
    let (a, b, c) = (unpack(f, x), unpack(f, y), unpack(f, z));
    let inf_times_zero = matches!(
        (a, b),
        (Val::Inf { .. }, Val::Zero { .. }) | (Val::Zero { .. }, Val::Inf { .. })
    );
    if let Some((nan, flags)) = nan_operands(f, &[a, b, c]) {
        // RISC-V: 0 * inf is invalid even when the addend is a quiet NaN.
        return (nan, if inf_times_zero { NV } else { flags });
    }
    if inf_times_zero {
        return invalid(f);
    }
    let ps = (f.sign_of(x) != f.sign_of(y)) != negate_product;
    let cs = f.sign_of(z) != negate_addend;
    let product_inf = matches!(a, Val::Inf { .. }) || matches!(b, Val::Inf { .. });
    let product_zero = matches!(a, Val::Zero { .. }) || matches!(b, Val::Zero { .. });
    if product_inf {
        return match c {
            Val::Inf { .. } if cs != ps => invalid(f),
            _ => (f.inf(ps), 0),
        };
    }
    match c {
        Val::Inf { .. } => return (f.inf(cs), 0),
        Val::Zero { .. } if product_zero => return (f.zero(zero_sum_sign(ps, cs, rm)), 0),
        _ if product_zero => return ((z & !f.sign_bit()) | f.signed(cs), 0),
        _ => {}
    }
    let product = match (a, b) {
        (
            Val::Finite {
                exp: ea, sig: sa, ..
            },
            Val::Finite {
                exp: eb, sig: sb, ..
            },
        ) => Term {
            sign: ps,
            exp: ea + eb,
            sig: u128::from(sa) * u128::from(sb),
        },
        _ => return invalid(f), // unreachable: specials handled above
    };
    match Term::from_val(c) {
        Some(addend) => add_terms(f, product, Term { sign: cs, ..addend }, rm),
        None => round_pack(f, product.sign, product.exp, product.sig, false, rm),
    }
}

// ---------------------------------------------------------------------------
// Public arithmetic
// ---------------------------------------------------------------------------

/// `fadd.s` / `fadd.d`.
pub fn add(p: Precision, a: u64, b: u64, rm: Rounding) -> FpOut {
    let f = Fmt::of(p);
    out(p, add_raw(f, load(p, a), load(p, b), rm))
}

/// `fsub.s` / `fsub.d`: `a + (-b)`.
pub fn sub(p: Precision, a: u64, b: u64, rm: Rounding) -> FpOut {
    let f = Fmt::of(p);
    out(p, add_raw(f, load(p, a), load(p, b) ^ f.sign_bit(), rm))
}

/// `fmul.s` / `fmul.d`.
pub fn mul(p: Precision, a: u64, b: u64, rm: Rounding) -> FpOut {
    out(p, mul_raw(Fmt::of(p), load(p, a), load(p, b), rm))
}

/// `fdiv.s` / `fdiv.d`.
pub fn div(p: Precision, a: u64, b: u64, rm: Rounding) -> FpOut {
    out(p, div_raw(Fmt::of(p), load(p, a), load(p, b), rm))
}

/// `fsqrt.s` / `fsqrt.d`. `sqrt(-0) = -0`; any other negative is invalid.
pub fn sqrt(p: Precision, a: u64, rm: Rounding) -> FpOut {
    out(p, sqrt_raw(Fmt::of(p), load(p, a), rm))
}

/// Fused multiply-add family, one rounding:
/// `fmadd` = `a*b + c` (no negation), `fmsub` = `a*b - c`
/// (`negate_addend`), `fnmsub` = `-(a*b) + c` (`negate_product`),
/// `fnmadd` = `-(a*b) - c` (both).
pub fn fma(
    p: Precision,
    a: u64,
    b: u64,
    c: u64,
    negate_product: bool,
    negate_addend: bool,
    rm: Rounding,
) -> FpOut {
    let f = Fmt::of(p);
    let ops = (load(p, a), load(p, b), load(p, c));
    out(p, fma_raw(f, ops, negate_product, negate_addend, rm))
}

/// A key that orders non-NaN values numerically, with -0 just below +0.
fn order_key(f: Fmt, bits: u64) -> i64 {
    let mag = (bits & !f.sign_bit()) as i64;
    if f.sign_of(bits) {
        -mag - 1
    } else {
        mag
    }
}

/// A key that orders non-NaN values numerically, with -0 equal to +0.
fn value_key(f: Fmt, bits: u64) -> i64 {
    let mag = (bits & !f.sign_bit()) as i64;
    if f.sign_of(bits) {
        -mag
    } else {
        mag
    }
}

fn min_max(p: Precision, a: u64, b: u64, want_max: bool) -> FpOut {
    let f = Fmt::of(p);
    let (x, y) = (load(p, a), load(p, b));
    let (va, vb) = (unpack(f, x), unpack(f, y));
    let flags = if va.is_snan() || vb.is_snan() { NV } else { 0 };
    let bits = match (va.is_nan(), vb.is_nan()) {
        (true, true) => f.canonical_nan(),
        (true, false) => y,
        (false, true) => x,
        (false, false) => {
            let x_below = order_key(f, x) < order_key(f, y);
            if x_below != want_max {
                x
            } else {
                y
            }
        }
    };
    FpOut {
        bits: store(p, bits),
        flags,
    }
}

/// `fmin.s` / `fmin.d`: IEEE 754-2019 minimumNumber. `-0 < +0`; a NaN
/// operand is ignored; two NaNs give the canonical NaN; `NV` only for a
/// signalling NaN.
pub fn min(p: Precision, a: u64, b: u64) -> FpOut {
    min_max(p, a, b, false)
}

/// `fmax.s` / `fmax.d`: IEEE 754-2019 maximumNumber, as [`min`].
pub fn max(p: Precision, a: u64, b: u64) -> FpOut {
    min_max(p, a, b, true)
}

/// Sign injection (`fsgnj`, `fsgnjn`, `fsgnjx`): the magnitude of `a` with a
/// sign derived from `b`. Never raises flags and never canonicalises NaNs,
/// but single operands are unboxed (an improperly boxed one is the canonical
/// NaN) and the result is boxed. Returns the register value.
pub fn sign_inject(p: Precision, a: u64, b: u64, kind: SignInject) -> u64 {
    let f = Fmt::of(p);
    let (x, y) = (load(p, a), load(p, b));
    let sb = f.sign_of(y);
    let sign = match kind {
        SignInject::Copy => sb,
        SignInject::Negate => !sb,
        SignInject::Xor => f.sign_of(x) != sb,
    };
    store(p, (x & !f.sign_bit()) | f.signed(sign))
}

fn compare(p: Precision, a: u64, b: u64, signalling: bool, pick: fn(i64, i64) -> bool) -> FpOut {
    let f = Fmt::of(p);
    let (x, y) = (load(p, a), load(p, b));
    let (va, vb) = (unpack(f, x), unpack(f, y));
    if va.is_nan() || vb.is_nan() {
        let nv = signalling || va.is_snan() || vb.is_snan();
        return FpOut {
            bits: 0,
            flags: if nv { NV } else { 0 },
        };
    }
    FpOut {
        bits: u64::from(pick(value_key(f, x), value_key(f, y))),
        flags: 0,
    }
}

/// `feq`: 1 if equal (`-0 == +0`), 0 otherwise or if either is NaN. A quiet
/// comparison: `NV` only for a signalling NaN.
pub fn eq(p: Precision, a: u64, b: u64) -> FpOut {
    compare(p, a, b, false, |x, y| x == y)
}

/// `flt`: 1 if `a < b`. A signalling comparison: `NV` for any NaN.
pub fn lt(p: Precision, a: u64, b: u64) -> FpOut {
    compare(p, a, b, true, |x, y| x < y)
}

/// `fle`: 1 if `a <= b`. A signalling comparison: `NV` for any NaN.
pub fn le(p: Precision, a: u64, b: u64) -> FpOut {
    compare(p, a, b, true, |x, y| x <= y)
}

/// `fclass`: a one-hot 10-bit mask. Bits: 0 -inf, 1 negative normal,
/// 2 negative subnormal, 3 -0, 4 +0, 5 positive subnormal, 6 positive
/// normal, 7 +inf, 8 signalling NaN, 9 quiet NaN. An improperly boxed single
/// is the canonical (quiet) NaN.
pub fn classify(p: Precision, a: u64) -> u64 {
    let f = Fmt::of(p);
    let x = load(p, a);
    let biased = (x >> f.man_bits) & f.exp_max();
    let bit = match unpack(f, x) {
        Val::Inf { sign } => {
            if sign {
                0
            } else {
                7
            }
        }
        Val::Zero { sign } => {
            if sign {
                3
            } else {
                4
            }
        }
        Val::Finite { sign, .. } => match (sign, biased == 0) {
            (true, false) => 1,
            (true, true) => 2,
            (false, true) => 5,
            (false, false) => 6,
        },
        Val::Nan { signalling } => {
            if signalling {
                8
            } else {
                9
            }
        }
    };
    1 << bit
}

// ---------------------------------------------------------------------------
// Conversions
// ---------------------------------------------------------------------------

/// Sign-extends the low 32 bits, as RV64 writes every 32-bit result.
fn sext32(v: u64) -> u64 {
    v as u32 as i32 as i64 as u64
}

/// Saturation values of a float-to-integer conversion, as register values:
/// (largest, smallest).
fn int_limits(kind: IntKind) -> (u64, u64) {
    match kind {
        IntKind::W => (sext32(i32::MAX as u64), sext32(i32::MIN as u32 as u64)),
        IntKind::Wu => (sext32(u64::from(u32::MAX)), 0),
        IntKind::L => (i64::MAX as u64, i64::MIN as u64),
        IntKind::Lu => (u64::MAX, 0),
    }
}

/// `fcvt.{w,wu,l,lu}.{s,d}`. Returns the x-register value. Rounds with
/// `rm`; `NX` if the in-range result is inexact. NaN, infinities and values
/// whose rounded result does not fit raise `NV` only and saturate: NaN and
/// positive overflow give the maximum, negative overflow the minimum (0 for
/// the unsigned kinds). A negative value that rounds to 0 is in range for the
/// unsigned kinds. 32-bit results are sign-extended to 64 bits, the unsigned
/// ones too (`fcvt.wu.s` of 3e9 gives 0xffff_ffff_b2d0_5e00).
pub fn to_int(p: Precision, a: u64, kind: IntKind, rm: Rounding) -> FpOut {
    let f = Fmt::of(p);
    let (max, min) = int_limits(kind);
    let saturate = |neg: bool| FpOut {
        bits: if neg { min } else { max },
        flags: NV,
    };
    match unpack(f, load(p, a)) {
        Val::Nan { .. } => saturate(false),
        Val::Inf { sign } => saturate(sign),
        Val::Zero { .. } => FpOut { bits: 0, flags: 0 },
        Val::Finite { sign, exp, sig } => {
            let (mag, inexact) = if exp >= 0 {
                if exp > 64 {
                    return saturate(sign);
                }
                (u128::from(sig) << exp, false)
            } else {
                round_shift(u128::from(sig), false, exp.unsigned_abs(), sign, rm)
            };
            // Largest magnitudes representable on each side.
            let (pos_limit, neg_limit): (u128, u128) = match kind {
                IntKind::W => (i32::MAX as u128, 1 << 31),
                IntKind::Wu => (u128::from(u32::MAX), 0),
                IntKind::L => (i64::MAX as u128, 1 << 63),
                IntKind::Lu => (u128::from(u64::MAX), 0),
            };
            if mag > if sign { neg_limit } else { pos_limit } {
                return saturate(sign);
            }
            let v = if sign {
                (mag as u64).wrapping_neg()
            } else {
                mag as u64
            };
            let bits = match kind {
                IntKind::W | IntKind::Wu => sext32(v),
                IntKind::L | IntKind::Lu => v,
            };
            FpOut {
                bits,
                flags: if inexact { NX } else { 0 },
            }
        }
    }
}

/// `fcvt.{s,d}.{w,wu,l,lu}`: converts the x-register value `x` (its low 32
/// bits for `W`/`Wu`). Zero gives +0; only `NX` can be raised.
pub fn from_int(p: Precision, x: u64, kind: IntKind, rm: Rounding) -> FpOut {
    let f = Fmt::of(p);
    let (sign, mag) = match kind {
        IntKind::W => {
            let v = x as u32 as i32;
            (v < 0, u64::from(v.unsigned_abs()))
        }
        IntKind::Wu => (false, u64::from(x as u32)),
        IntKind::L => {
            let v = x as i64;
            (v < 0, v.unsigned_abs())
        }
        IntKind::Lu => (false, x),
    };
    if mag == 0 {
        return out(p, (f.zero(false), 0));
    }
    out(p, round_pack(f, sign, 0, u128::from(mag), false, rm))
}

/// `fcvt.s.d` / `fcvt.d.s`: NaNs become the canonical NaN of `to` (`NV` if
/// signalling); narrowing rounds with `rm` and may overflow or underflow;
/// widening is exact. (`from == to` is accepted and just canonicalises NaNs.)
pub fn convert(from: Precision, to: Precision, a: u64, rm: Rounding) -> FpOut {
    let (ff, tf) = (Fmt::of(from), Fmt::of(to));
    let r = match unpack(ff, load(from, a)) {
        Val::Nan { signalling } => (tf.canonical_nan(), if signalling { NV } else { 0 }),
        Val::Inf { sign } => (tf.inf(sign), 0),
        Val::Zero { sign } => (tf.zero(sign), 0),
        Val::Finite { sign, exp, sig } => round_pack(tf, sign, exp, u128::from(sig), false, rm),
    };
    out(to, r)
}

#[cfg(test)]
mod tests {
    //! The references are independent of the code above: the host FPU (which
    //! rounds to nearest even and handles subnormals) for `Rne`, and for the
    //! directed modes an exact oracle built from error-free transformations
    //! (TwoSum, FMA-based TwoProduct and Shewchuk expansion sums) that gives
    //! the sign of `exact result - candidate` for any candidate, including
    //! midpoints between two neighbouring results. Single-precision
    //! operands and results are exact in `f64`, so the single checks cover
    //! the full range (subnormals, underflow, overflow); double checks of the
    //! directed modes use exponents where the transformations stay exact.

    use super::*;
    use proptest::prelude::*;
    use std::cmp::Ordering::{self, Equal, Greater, Less};

    const MODES: [Rounding; 5] = [
        Rounding::Rne,
        Rounding::Rtz,
        Rounding::Rdn,
        Rounding::Rup,
        Rounding::Rmm,
    ];
    const S: Precision = Precision::Single;
    const D: Precision = Precision::Double;
    const KINDS: [IntKind; 4] = [IntKind::W, IntKind::Wu, IntKind::L, IntKind::Lu];
    const QNAN_S: u32 = 0x7fc0_0000;
    const QNAN_D: u64 = 0x7ff8_0000_0000_0000;
    const SNAN_S: u32 = 0x7f80_0001;
    const SNAN_D: u64 = 0x7ff0_0000_0000_0001;

    fn bs(v: f32) -> u64 {
        box_single(v.to_bits())
    }

    fn bd(v: f64) -> u64 {
        v.to_bits()
    }

    fn pow2(e: i32) -> f64 {
        2f64.powi(e)
    }

    fn out(bits: u64, flags: u8) -> FpOut {
        FpOut { bits, flags }
    }

    /// A result register as a host value; singles must be NaN-boxed.
    fn val(p: Precision, reg: u64) -> f64 {
        match p {
            S => {
                assert_eq!(reg >> 32, 0xffff_ffff, "single not NaN-boxed: {reg:#x}");
                f64::from(f32::from_bits(reg as u32))
            }
            D => f64::from_bits(reg),
        }
    }

    /// Operand register from the raw bits of a value of precision `p`.
    fn reg(p: Precision, bits: u64) -> u64 {
        match p {
            S => box_single(bits as u32),
            D => bits,
        }
    }

    /// Host value of the raw bits of an operand.
    fn host(p: Precision, bits: u64) -> f64 {
        match p {
            S => f64::from(f32::from_bits(bits as u32)),
            D => f64::from_bits(bits),
        }
    }

    fn is_snan(p: Precision, bits: u64) -> bool {
        match p {
            S => f32::from_bits(bits as u32).is_nan() && bits & 0x0040_0000 == 0,
            D => f64::from_bits(bits).is_nan() && bits & (1 << 51) == 0,
        }
    }

    // `f32::next_up` needs Rust 1.86; the crate's MSRV is 1.85.
    fn next_up32(x: f32) -> f32 {
        if x.is_nan() || x == f32::INFINITY {
            x
        } else if x == 0.0 {
            f32::from_bits(1)
        } else if x > 0.0 {
            f32::from_bits(x.to_bits() + 1)
        } else {
            f32::from_bits(x.to_bits() - 1)
        }
    }

    fn next_up64(x: f64) -> f64 {
        if x.is_nan() || x == f64::INFINITY {
            x
        } else if x == 0.0 {
            f64::from_bits(1)
        } else if x > 0.0 {
            f64::from_bits(x.to_bits() + 1)
        } else {
            f64::from_bits(x.to_bits() - 1)
        }
    }

    fn next_up(p: Precision, v: f64) -> f64 {
        match p {
            S => f64::from(next_up32(v as f32)),
            D => next_up64(v),
        }
    }

    fn next_down(p: Precision, v: f64) -> f64 {
        -next_up(p, -v)
    }

    fn is_even(p: Precision, v: f64) -> bool {
        match p {
            S => (v as f32).to_bits() & 1 == 0,
            D => v.to_bits() & 1 == 0,
        }
    }

    fn max_finite(p: Precision) -> f64 {
        match p {
            S => f64::from(f32::MAX),
            D => f64::MAX,
        }
    }

    // ----- exact oracle -------------------------------------------------

    fn two_sum(a: f64, b: f64) -> (f64, f64) {
        let s = a + b;
        let bb = s - a;
        (s, (a - (s - bb)) + (b - bb))
    }

    fn two_prod(a: f64, b: f64) -> (f64, f64) {
        let p = a * b;
        (p, a.mul_add(b, -p))
    }

    /// Sign of the exact sum of `terms` (Shewchuk's grow-expansion: the
    /// components are non-overlapping, so the largest non-zero one decides).
    fn exact_sign(terms: &[f64]) -> Ordering {
        let mut e: Vec<f64> = Vec::new();
        for &t in terms {
            assert!(t.is_finite(), "oracle term not finite: {terms:?}");
            let mut q = t;
            let mut h = Vec::with_capacity(e.len() + 1);
            for &x in &e {
                let (s, err) = two_sum(q, x);
                if err != 0.0 {
                    h.push(err);
                }
                q = s;
            }
            assert!(q.is_finite(), "oracle overflow: {terms:?}");
            h.push(q);
            e = h;
        }
        e.iter()
            .rev()
            .find(|x| **x != 0.0)
            .map_or(Equal, |x| if *x > 0.0 { Greater } else { Less })
    }

    /// `cmp(base, off)` gives the sign of `exact - (base + off)`.
    type Oracle<'a> = &'a dyn Fn(f64, f64) -> Ordering;

    /// Checks the results of one operation in the five modes (in `MODES`
    /// order) against the exact value: each is the right neighbour, ties go
    /// the right way, and NX / OF / UF are exactly right.
    fn check_modes(p: Precision, outs: &[FpOut; 5], cmp: Oracle, what: &str) {
        let c = |base: f64, off: f64| {
            if base == f64::INFINITY {
                Less
            } else if base == f64::NEG_INFINITY {
                Greater
            } else {
                cmp(base, off)
            }
        };
        let v: Vec<f64> = outs.iter().map(|o| val(p, o.bits)).collect();
        assert!(v.iter().all(|x| !x.is_nan()), "{what}: NaN {outs:x?}");
        let (rne, rtz, rdn, rup, rmm) = (v[0], v[1], v[2], v[3], v[4]);
        assert!(
            c(rdn, 0.0) != Less && c(next_up(p, rdn), 0.0) == Less,
            "{what}: rdn {rdn:e} is not the floor"
        );
        assert!(
            c(rup, 0.0) != Greater && c(next_down(p, rup), 0.0) == Greater,
            "{what}: rup {rup:e} is not the ceiling"
        );
        let sign = c(0.0, 0.0);
        match sign {
            Greater => assert_eq!(rtz, rdn, "{what}: rtz"),
            Less => assert_eq!(rtz, rup, "{what}: rtz"),
            Equal => assert_eq!(rtz, 0.0, "{what}: rtz"),
        }
        let inexact = rdn != rup;
        let max = max_finite(p);
        let half_max = (max - next_down(p, max)) / 2.0;
        if inexact {
            let m = if rdn.is_finite() {
                let half = if rup.is_finite() {
                    (rup - rdn) / 2.0
                } else {
                    half_max
                };
                c(rdn, half)
            } else {
                c(rup, -half_max)
            };
            let (want_rne, want_rmm) = match m {
                Greater => (rup, rup),
                Less => (rdn, rdn),
                Equal => (
                    if is_even(p, rdn) { rdn } else { rup },
                    if rdn.abs() > rup.abs() { rdn } else { rup },
                ),
            };
            assert_eq!(rne, want_rne, "{what}: rne");
            assert_eq!(rmm, want_rmm, "{what}: rmm");
            for x in &v {
                if *x == 0.0 {
                    assert_eq!(x.is_sign_negative(), sign == Less, "{what}: zero sign");
                }
            }
        } else {
            assert_eq!(rne, rdn, "{what}: rne exact");
            assert_eq!(rmm, rdn, "{what}: rmm exact");
        }

        // |exact| compared with t + off (t > 0).
        let ac = |t: f64, off: f64| {
            if sign == Less {
                c(-t, -off).reverse()
            } else {
                c(t, off)
            }
        };
        for (o, rm) in outs.iter().zip(MODES) {
            assert_eq!(o.flags & (NV | DZ), 0, "{what}: {rm:?} NV/DZ");
            assert_eq!(o.flags & NX != 0, inexact, "{what}: {rm:?} NX");
            // Direction of the rounding in magnitude: 0 nearest, -1 towards
            // zero, 1 away from zero.
            let dir = match rm {
                Rounding::Rne | Rounding::Rmm => 0,
                Rounding::Rtz => -1,
                Rounding::Rdn => {
                    if sign == Less {
                        1
                    } else {
                        -1
                    }
                }
                Rounding::Rup => {
                    if sign == Less {
                        -1
                    } else {
                        1
                    }
                }
            };
            let (of, uf) = match p {
                S => {
                    // Overflow: the result rounded with unbounded exponent
                    // exceeds MAX. Tiny: it is below the smallest normal.
                    let of = match dir {
                        0 => ac(max, half_max) != Less,
                        -1 => ac(max, 2.0 * half_max) != Less,
                        _ => ac(max, 0.0) == Greater,
                    };
                    let (mn, ms) = (pow2(-126), pow2(-149));
                    let tiny = match dir {
                        0 => ac(mn, -ms / 4.0) == Less,
                        -1 => ac(mn, 0.0) == Less,
                        _ => ac(mn, -ms / 2.0) != Greater,
                    };
                    (Some(of), Some(tiny && inexact))
                }
                // The double tests keep every exact result (other than 0)
                // within 2^-1000..2^1000.
                D => (Some(false), Some(false)),
            };
            if let Some(of) = of {
                assert_eq!(o.flags & OF != 0, of, "{what}: {rm:?} OF {o:x?}");
            }
            if let Some(uf) = uf {
                assert_eq!(o.flags & UF != 0, uf, "{what}: {rm:?} UF {o:x?}");
            }
        }
    }

    fn all_modes(f: impl Fn(Rounding) -> FpOut) -> [FpOut; 5] {
        MODES.map(f)
    }

    // ----- host comparison (round to nearest even) ----------------------

    /// Our `Rne` result against the host's: identical bits, or the canonical
    /// NaN when the host gives any NaN; NV / DZ as expected.
    fn check_host(p: Precision, ours: FpOut, host_bits: u64, nv: bool, dz: bool, what: &str) {
        let host_nan = host(p, host_bits).is_nan();
        let want = match (p, host_nan) {
            (S, true) => box_single(QNAN_S),
            (S, false) => box_single(host_bits as u32),
            (D, true) => QNAN_D,
            (D, false) => host_bits,
        };
        assert_eq!(ours.bits, want, "{what}: bits {ours:x?}");
        assert_eq!(ours.flags & NV != 0, nv, "{what}: NV {ours:x?}");
        assert_eq!(ours.flags & DZ != 0, dz, "{what}: DZ {ours:x?}");
        if host_nan {
            assert_eq!(ours.flags & (NX | OF | UF), 0, "{what}: flags with NaN");
        }
    }

    /// NV as IEEE defines it for a NaN result: a signalling operand, or a
    /// NaN produced from non-NaN operands.
    fn expect_nv(p: Precision, ops: &[u64], host_bits: u64) -> bool {
        ops.iter().any(|&b| is_snan(p, b))
            || (host(p, host_bits).is_nan() && !ops.iter().any(|&b| host(p, b).is_nan()))
    }

    type BinOp = fn(f64, f64) -> f64;

    fn host_bin(a: u64, b: u64, op: BinOp) -> u64 {
        op(f64::from_bits(a), f64::from_bits(b)).to_bits()
    }

    // ----- generators ---------------------------------------------------

    const SPECIAL_S: [u32; 14] = [
        0,
        0x8000_0000,
        0x7f80_0000,
        0xff80_0000,
        QNAN_S,
        0xffc0_0000,
        SNAN_S,
        0x7fbf_ffff,
        1,
        0x007f_ffff,
        0x0080_0000,
        0x7f7f_ffff,
        0x3f80_0000,
        0xbf80_0000,
    ];
    const SPECIAL_D: [u64; 14] = [
        0,
        1 << 63,
        0x7ff0_0000_0000_0000,
        0xfff0_0000_0000_0000,
        QNAN_D,
        0xfff8_0000_0000_0000,
        SNAN_D,
        0x7ff7_ffff_ffff_ffff,
        1,
        0x000f_ffff_ffff_ffff,
        0x0010_0000_0000_0000,
        0x7fef_ffff_ffff_ffff,
        0x3ff0_0000_0000_0000,
        0xbff0_0000_0000_0000,
    ];

    fn s_from(sign: bool, exp: u32, man: u32) -> u32 {
        u32::from(sign) << 31 | (exp & 0xff) << 23 | (man & 0x7f_ffff)
    }

    fn d_from(sign: bool, exp: u64, man: u64) -> u64 {
        u64::from(sign) << 63 | (exp & 0x7ff) << 52 | (man & 0xf_ffff_ffff_ffff)
    }

    /// Any single, weighted towards the interesting regions.
    fn any_s() -> impl Strategy<Value = u32> {
        prop_oneof![
            4 => any::<u32>(),
            2 => (any::<bool>(), 0u32..3, any::<u32>()).prop_map(|(s, e, m)| s_from(s, e, m)),
            3 => (any::<bool>(), 100u32..156, any::<u32>()).prop_map(|(s, e, m)| s_from(s, e, m)),
            1 => (any::<bool>(), 230u32..255, any::<u32>()).prop_map(|(s, e, m)| s_from(s, e, m)),
            // Short significands: exact results and ties.
            2 => (any::<bool>(), 1u32..255, any::<u32>(), 0u32..23)
                .prop_map(|(s, e, m, k)| s_from(s, e, m & !((1 << k) - 1))),
            1 => prop::sample::select(SPECIAL_S.to_vec()),
        ]
    }

    fn any_d() -> impl Strategy<Value = u64> {
        prop_oneof![
            4 => any::<u64>(),
            2 => (any::<bool>(), 0u64..3, any::<u64>()).prop_map(|(s, e, m)| d_from(s, e, m)),
            3 => (any::<bool>(), 990u64..1060, any::<u64>()).prop_map(|(s, e, m)| d_from(s, e, m)),
            1 => (any::<bool>(), 2000u64..2047, any::<u64>()).prop_map(|(s, e, m)| d_from(s, e, m)),
            2 => (any::<bool>(), 1u64..2047, any::<u64>(), 0u32..52)
                .prop_map(|(s, e, m, k)| d_from(s, e, m & !((1 << k) - 1))),
            1 => prop::sample::select(SPECIAL_D.to_vec()),
        ]
    }

    /// Doubles with exponents within 2^±400, where the oracle stays exact.
    fn moderate_d() -> impl Strategy<Value = u64> {
        prop_oneof![
            3 => (any::<bool>(), 623u64..1423, any::<u64>()).prop_map(|(s, e, m)| d_from(s, e, m)),
            2 => (any::<bool>(), 1000u64..1050, any::<u64>()).prop_map(|(s, e, m)| d_from(s, e, m)),
            2 => (any::<bool>(), 623u64..1423, any::<u64>(), 0u32..52)
                .prop_map(|(s, e, m, k)| d_from(s, e, m & !((1 << k) - 1))),
            1 => Just(0u64),
            1 => Just(1u64 << 63),
        ]
    }

    fn finite_s() -> impl Strategy<Value = u32> {
        any_s().prop_filter("finite", |b| f32::from_bits(*b).is_finite())
    }

    /// Pairs that often nearly cancel (or nearly coincide).
    fn pair_s(each: fn() -> BoxedStrategy<u32>) -> impl Strategy<Value = (u32, u32)> {
        prop_oneof![
            (each(), each()),
            (each(), any::<u32>(), 0u32..27, any::<bool>()).prop_map(|(a, r, k, neg)| {
                (a, a ^ (r & ((1 << k) - 1)) ^ if neg { 1 << 31 } else { 0 })
            }),
        ]
    }

    fn pair_d(each: fn() -> BoxedStrategy<u64>) -> impl Strategy<Value = (u64, u64)> {
        prop_oneof![
            (each(), each()),
            (each(), any::<u64>(), 0u32..56, any::<bool>()).prop_map(|(a, r, k, neg)| {
                (a, a ^ (r & ((1 << k) - 1)) ^ if neg { 1 << 63 } else { 0 })
            }),
        ]
    }

    fn any_s_boxed() -> BoxedStrategy<u32> {
        any_s().boxed()
    }
    fn finite_s_boxed() -> BoxedStrategy<u32> {
        finite_s().boxed()
    }
    fn any_d_boxed() -> BoxedStrategy<u64> {
        any_d().boxed()
    }
    fn moderate_d_boxed() -> BoxedStrategy<u64> {
        moderate_d().boxed()
    }

    /// Triples for fma, sometimes with c close to -(a*b).
    fn triple_s(each: fn() -> BoxedStrategy<u32>) -> impl Strategy<Value = (u32, u32, u32)> {
        prop_oneof![
            (each(), each(), each()),
            (each(), each(), any::<u32>(), 0u32..27).prop_map(|(a, b, r, k)| {
                let c = -(f32::from_bits(a) * f32::from_bits(b));
                (a, b, c.to_bits() ^ (r & ((1 << k) - 1)))
            }),
        ]
    }

    fn triple_d(each: fn() -> BoxedStrategy<u64>) -> impl Strategy<Value = (u64, u64, u64)> {
        prop_oneof![
            (each(), each(), each()),
            (each(), each(), any::<u64>(), 0u32..56).prop_map(|(a, b, r, k)| {
                let c = -(f64::from_bits(a) * f64::from_bits(b));
                (a, b, c.to_bits() ^ (r & ((1 << k) - 1)))
            }),
        ]
    }

    const FMA_SIGNS: [(bool, bool); 4] =
        [(false, false), (false, true), (true, false), (true, true)];

    fn host_fma_s(a: f32, b: f32, c: f32, np: bool, nc: bool) -> f32 {
        let a = if np { -a } else { a };
        let c = if nc { -c } else { c };
        a.mul_add(b, c)
    }

    fn host_fma_d(a: f64, b: f64, c: f64, np: bool, nc: bool) -> f64 {
        let a = if np { -a } else { a };
        let c = if nc { -c } else { c };
        a.mul_add(b, c)
    }

    // Oracles: sign(exact - (base + off)) for each operation on host values.
    fn add_oracle(a: f64, b: f64) -> impl Fn(f64, f64) -> Ordering {
        move |base, off| exact_sign(&[a, b, -base, -off])
    }

    fn mul_oracle(a: f64, b: f64) -> impl Fn(f64, f64) -> Ordering {
        let (h, l) = two_prod(a, b);
        move |base, off| exact_sign(&[h, l, -base, -off])
    }

    fn div_oracle(a: f64, b: f64) -> impl Fn(f64, f64) -> Ordering {
        // sign(a/b - m) = sign(a - m*b) * sign(b)
        move |base, off| {
            let (h, l) = two_prod(base, b);
            let s = exact_sign(&[a, -h, -l, -(off * b)]);
            if b < 0.0 {
                s.reverse()
            } else {
                s
            }
        }
    }

    fn sqrt_oracle(a: f64) -> impl Fn(f64, f64) -> Ordering {
        // For m >= 0: sign(sqrt(a) - m) = sign(a - m^2).
        move |base, off| {
            if base < 0.0 || (base == 0.0 && off < 0.0) {
                return Greater;
            }
            let (h, l) = two_prod(base, base);
            exact_sign(&[a, -h, -l, -(2.0 * base * off), -(off * off)])
        }
    }

    fn fma_oracle(a: f64, b: f64, c: f64, np: bool, nc: bool) -> impl Fn(f64, f64) -> Ordering {
        let (h, l) = two_prod(a, b);
        let (h, l) = if np { (-h, -l) } else { (h, l) };
        let c = if nc { -c } else { c };
        move |base, off| exact_sign(&[h, l, c, -base, -off])
    }

    fn int_oracle(x: i128) -> impl Fn(f64, f64) -> Ordering {
        let hi = x as f64;
        let lo = (x - hi as i128) as f64;
        move |base, off| exact_sign(&[hi, lo, -base, -off])
    }

    fn single_value_oracle(a: f64) -> impl Fn(f64, f64) -> Ordering {
        move |base, off| exact_sign(&[a, -base, -off])
    }

    fn int_value(x: u64, kind: IntKind) -> i128 {
        match kind {
            IntKind::W => i128::from(x as u32 as i32),
            IntKind::Wu => i128::from(x as u32),
            IntKind::L => i128::from(x as i64),
            IntKind::Lu => i128::from(x),
        }
    }

    /// Reference float-to-integer conversion from host rounding functions.
    fn ref_to_int(v: f64, kind: IntKind, rm: Rounding) -> FpOut {
        let (lo, hi): (i128, i128) = match kind {
            IntKind::W => (i32::MIN.into(), i32::MAX.into()),
            IntKind::Wu => (0, u32::MAX.into()),
            IntKind::L => (i64::MIN.into(), i64::MAX.into()),
            IntKind::Lu => (0, u64::MAX.into()),
        };
        let ext = |i: i128| match kind {
            IntKind::W | IntKind::Wu => i as u64 as u32 as i32 as i64 as u64,
            IntKind::L | IntKind::Lu => i as u64,
        };
        if v.is_nan() {
            return out(ext(hi), NV);
        }
        let r = match rm {
            Rounding::Rne => v.round_ties_even(),
            Rounding::Rtz => v.trunc(),
            Rounding::Rdn => v.floor(),
            Rounding::Rup => v.ceil(),
            Rounding::Rmm => v.round(),
        };
        let i = r as i128; // saturating; anything saturated is out of range
        if r.is_infinite() || i < lo || i > hi {
            return out(ext(if r < 0.0 { lo } else { hi }), NV);
        }
        out(ext(i), if r != v { NX } else { 0 })
    }

    fn finite_or<T: Into<f64> + Copy>(v: T, or: T) -> T {
        if v.into().is_finite() {
            v
        } else {
            or
        }
    }

    fn to_s(bits: u32) -> f32 {
        f32::from_bits(bits)
    }

    fn to_d(bits: u64) -> f64 {
        f64::from_bits(bits)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(20_000))]

        // ----- Rne against the host, full range -----

        #[test]
        fn single_arith_matches_host((a, b) in pair_s(any_s_boxed)) {
            let (x, y) = (to_s(a), to_s(b));
            let (ra, rb) = (bs(x), bs(y));
            let ops = [u64::from(a), u64::from(b)];
            let cases: [(&str, FpOut, f32); 4] = [
                ("add", add(S, ra, rb, Rounding::Rne), x + y),
                ("sub", sub(S, ra, rb, Rounding::Rne), x - y),
                ("mul", mul(S, ra, rb, Rounding::Rne), x * y),
                ("div", div(S, ra, rb, Rounding::Rne), x / y),
            ];
            for (name, ours, h) in cases {
                let hb = u64::from(h.to_bits());
                let dz = name == "div" && x.is_finite() && x != 0.0 && y == 0.0;
                check_host(S, ours, hb, expect_nv(S, &ops, hb), dz, &format!("{name} {a:#x} {b:#x}"));
            }
            let h = x.sqrt();
            let hb = u64::from(h.to_bits());
            check_host(S, sqrt(S, ra, Rounding::Rne), hb, expect_nv(S, &ops[..1], hb), false,
                &format!("sqrt {a:#x}"));
            // NX for add/sub: TwoSum in f32 is exact when the sum is finite.
            for (neg, ours) in [(false, add(S, ra, rb, Rounding::Rne)), (true, sub(S, ra, rb, Rounding::Rne))] {
                let y = if neg { -y } else { y };
                let s = x + y;
                if x.is_finite() && y.is_finite() && s.is_finite() {
                    let bb = s - x;
                    let err = (x - (s - bb)) + (y - bb);
                    prop_assert_eq!(ours.flags & NX != 0, err != 0.0);
                }
            }
        }

        #[test]
        fn double_arith_matches_host((a, b) in pair_d(any_d_boxed)) {
            let (x, y) = (to_d(a), to_d(b));
            let ops = [a, b];
            let cases: [(&str, FpOut, BinOp); 4] = [
                ("add", add(D, a, b, Rounding::Rne), |x, y| x + y),
                ("sub", sub(D, a, b, Rounding::Rne), |x, y| x - y),
                ("mul", mul(D, a, b, Rounding::Rne), |x, y| x * y),
                ("div", div(D, a, b, Rounding::Rne), |x, y| x / y),
            ];
            for (name, ours, op) in cases {
                let hb = host_bin(a, b, op);
                let dz = name == "div" && x.is_finite() && x != 0.0 && y == 0.0;
                check_host(D, ours, hb, expect_nv(D, &ops, hb), dz, &format!("{name} {a:#x} {b:#x}"));
            }
            let hb = x.sqrt().to_bits();
            check_host(D, sqrt(D, a, Rounding::Rne), hb, expect_nv(D, &ops[..1], hb), false,
                &format!("sqrt {a:#x}"));
            // Independent NX checks where the error terms are exact.
            let s = x + y;
            if x.is_finite() && y.is_finite() && s.is_finite() {
                let (_, err) = two_sum(x, y);
                prop_assert_eq!(add(D, a, b, Rounding::Rne).flags & NX != 0, err != 0.0);
            }
            let pr = x * y;
            if pr.is_finite() && pr.abs() >= pow2(-960) {
                let (_, err) = two_prod(x, y);
                prop_assert_eq!(mul(D, a, b, Rounding::Rne).flags & NX != 0, err != 0.0);
            }
            let q = x / y;
            if q.is_finite() && q != 0.0 && q.abs() >= pow2(-960) && x.abs() >= pow2(-960) {
                let rem = (-q).mul_add(y, x);
                prop_assert_eq!(div(D, a, b, Rounding::Rne).flags & NX != 0, rem != 0.0);
            }
            let r = x.sqrt();
            if r.is_finite() && r > 0.0 && x >= pow2(-960) {
                let rem = (-r).mul_add(r, x);
                prop_assert_eq!(sqrt(D, a, Rounding::Rne).flags & NX != 0, rem != 0.0);
            }
        }

        #[test]
        fn fma_matches_host_single((a, b, c) in triple_s(any_s_boxed)) {
            let (x, y, z) = (to_s(a), to_s(b), to_s(c));
            let ops = [u64::from(a), u64::from(b), u64::from(c)];
            let inf_zero = (x.is_infinite() && y == 0.0) || (x == 0.0 && y.is_infinite());
            for (np, nc) in FMA_SIGNS {
                let ours = fma(S, bs(x), bs(y), bs(z), np, nc, Rounding::Rne);
                let hb = u64::from(host_fma_s(x, y, z, np, nc).to_bits());
                let nv = expect_nv(S, &ops, hb) || inf_zero;
                check_host(S, ours, hb, nv, false, &format!("fma {a:#x} {b:#x} {c:#x} {np} {nc}"));
            }
        }

        #[test]
        fn fma_matches_host_double((a, b, c) in triple_d(any_d_boxed)) {
            let (x, y, z) = (to_d(a), to_d(b), to_d(c));
            let inf_zero = (x.is_infinite() && y == 0.0) || (x == 0.0 && y.is_infinite());
            for (np, nc) in FMA_SIGNS {
                let ours = fma(D, a, b, c, np, nc, Rounding::Rne);
                let hb = host_fma_d(x, y, z, np, nc).to_bits();
                let nv = expect_nv(D, &[a, b, c], hb) || inf_zero;
                check_host(D, ours, hb, nv, false, &format!("fma {a:#x} {b:#x} {c:#x} {np} {nc}"));
            }
        }

        // ----- all five modes against the exact oracle -----

        #[test]
        fn single_arith_all_modes((a, b) in pair_s(finite_s_boxed)) {
            let (x, y) = (to_s(a), to_s(b));
            // The near-cancelling pairs can perturb into a NaN or infinity.
            let (x, y) = (finite_or(x, 1.5), finite_or(y, -0.75));
            let (ra, rb) = (bs(x), bs(y));
            let (fx, fy) = (f64::from(x), f64::from(y));
            let w = format!("{a:#x} {b:#x}");
            check_modes(S, &all_modes(|rm| add(S, ra, rb, rm)), &add_oracle(fx, fy), &format!("add {w}"));
            check_modes(S, &all_modes(|rm| sub(S, ra, rb, rm)), &add_oracle(fx, -fy), &format!("sub {w}"));
            check_modes(S, &all_modes(|rm| mul(S, ra, rb, rm)), &mul_oracle(fx, fy), &format!("mul {w}"));
            if y != 0.0 {
                check_modes(S, &all_modes(|rm| div(S, ra, rb, rm)), &div_oracle(fx, fy), &format!("div {w}"));
            }
            if x >= 0.0 {
                check_modes(S, &all_modes(|rm| sqrt(S, ra, rm)), &sqrt_oracle(fx), &format!("sqrt {w}"));
            }
        }

        #[test]
        fn double_arith_all_modes((a, b) in pair_d(moderate_d_boxed)) {
            let (x, y) = (to_d(a), to_d(b));
            // The near-cancelling pairs can perturb into a NaN or infinity.
            let (x, y) = (finite_or(x, 1.5), finite_or(y, -0.75));
            let (a, b) = (bd(x), bd(y));
            let w = format!("{a:#x} {b:#x}");
            check_modes(D, &all_modes(|rm| add(D, a, b, rm)), &add_oracle(x, y), &format!("add {w}"));
            check_modes(D, &all_modes(|rm| sub(D, a, b, rm)), &add_oracle(x, -y), &format!("sub {w}"));
            check_modes(D, &all_modes(|rm| mul(D, a, b, rm)), &mul_oracle(x, y), &format!("mul {w}"));
            // With a zero dividend or radicand the candidates next to zero are
            // subnormal and the oracle's products would underflow.
            if y != 0.0 && x != 0.0 {
                check_modes(D, &all_modes(|rm| div(D, a, b, rm)), &div_oracle(x, y), &format!("div {w}"));
            }
            if x > 0.0 {
                check_modes(D, &all_modes(|rm| sqrt(D, a, rm)), &sqrt_oracle(x), &format!("sqrt {w}"));
            }
        }

        #[test]
        fn fma_all_modes_single((a, b, c) in triple_s(finite_s_boxed)) {
            let (x, y, z) = (to_s(a), to_s(b), to_s(c));
            let z = finite_or(z, 1.25);
            for (np, nc) in FMA_SIGNS {
                let outs = all_modes(|rm| fma(S, bs(x), bs(y), bs(z), np, nc, rm));
                let oracle = fma_oracle(f64::from(x), f64::from(y), f64::from(z), np, nc);
                check_modes(S, &outs, &oracle, &format!("fma {a:#x} {b:#x} {c:#x} {np} {nc}"));
            }
        }

        #[test]
        fn fma_all_modes_double((a, b, c) in triple_d(moderate_d_boxed)) {
            let (x, y, z) = (to_d(a), to_d(b), to_d(c));
            let z = finite_or(z, 1.25);
            let c = bd(z);
            for (np, nc) in FMA_SIGNS {
                let outs = all_modes(|rm| fma(D, a, b, c, np, nc, rm));
                let oracle = fma_oracle(x, y, z, np, nc);
                check_modes(D, &outs, &oracle, &format!("fma {a:#x} {b:#x} {c:#x} {np} {nc}"));
            }
        }

        /// Full double range (subnormals, overflow) where no exact oracle is
        /// available: the five modes must be mutually consistent, with `Rne`
        /// checked against the host above.
        #[test]
        fn double_modes_consistent((a, b, c) in triple_d(any_d_boxed)) {
            let results: [[FpOut; 5]; 6] = [
                all_modes(|rm| add(D, a, b, rm)),
                all_modes(|rm| mul(D, a, b, rm)),
                all_modes(|rm| div(D, a, b, rm)),
                all_modes(|rm| sqrt(D, a, rm)),
                all_modes(|rm| fma(D, a, b, c, false, false, rm)),
                all_modes(|rm| fma(D, a, b, c, true, false, rm)),
            ];
            for outs in results {
                let v = outs.map(|o| to_d(o.bits));
                if v[0].is_nan() {
                    prop_assert!(outs.iter().all(|o| *o == outs[0] && o.bits == QNAN_D));
                    continue;
                }
                let [rne, rtz, rdn, rup, rmm] = v;
                let nx = outs[0].flags & NX != 0;
                prop_assert!(outs.iter().all(|o| (o.flags & NX != 0) == nx));
                prop_assert!(outs.iter().all(|o| o.flags & (NV | DZ) == outs[0].flags & (NV | DZ)));
                if !nx {
                    prop_assert!(rtz == rne && rdn == rne && rup == rne && rmm == rne);
                } else {
                    prop_assert!(rup == next_up64(rdn) || (rdn == 0.0 && rup == pow2(-1074)));
                    prop_assert!(rne == rdn || rne == rup);
                    prop_assert!(rmm == rdn || rmm == rup);
                    let toward_zero = if rdn >= 0.0 { rdn } else { rup };
                    prop_assert!(rtz == toward_zero);
                    if rmm != rne {
                        // Only on a tie, where Rne picked the even neighbour.
                        prop_assert!(rmm.abs() > rne.abs() && rne.to_bits() & 1 == 0);
                    }
                }
            }
        }

        // ----- conversions -----

        #[test]
        fn to_int_matches_reference(a in any_s(), b in any_d()) {
            for kind in KINDS {
                for rm in MODES {
                    let want = ref_to_int(f64::from(to_s(a)), kind, rm);
                    prop_assert_eq!(to_int(S, box_single(a), kind, rm), want, "s {:#x} {:?} {:?}", a, kind, rm);
                    let want = ref_to_int(to_d(b), kind, rm);
                    prop_assert_eq!(to_int(D, b, kind, rm), want, "d {:#x} {:?} {:?}", b, kind, rm);
                }
            }
        }

        #[test]
        fn to_int_near_integers(s in any::<bool>(), e in 120u32..192, m in any::<u32>(), k in 0u32..24) {
            // Values with few fraction bits: ties, halfway cases, range edges.
            let a = s_from(s, e, m & !((1 << k) - 1));
            let b = d_from(s, u64::from(e) + 1023 - 127, u64::from(m & !((1 << k) - 1)) << 29);
            for kind in KINDS {
                for rm in MODES {
                    prop_assert_eq!(to_int(S, box_single(a), kind, rm), ref_to_int(f64::from(to_s(a)), kind, rm));
                    prop_assert_eq!(to_int(D, b, kind, rm), ref_to_int(to_d(b), kind, rm));
                }
            }
        }

        #[test]
        fn from_int_all_modes(x in prop_oneof![any::<u64>(), (any::<u64>(), 0u32..64).prop_map(|(x, k)| x >> k)]) {
            for kind in KINDS {
                let v = int_value(x, kind);
                let hs: f32 = match kind {
                    IntKind::W => (x as u32 as i32) as f32,
                    IntKind::Wu => (x as u32) as f32,
                    IntKind::L => (x as i64) as f32,
                    IntKind::Lu => x as f32,
                };
                let hd: f64 = match kind {
                    IntKind::W => f64::from(x as u32 as i32),
                    IntKind::Wu => f64::from(x as u32),
                    IntKind::L => (x as i64) as f64,
                    IntKind::Lu => x as f64,
                };
                prop_assert_eq!(from_int(S, x, kind, Rounding::Rne).bits, bs(hs));
                prop_assert_eq!(from_int(D, x, kind, Rounding::Rne).bits, bd(hd));
                let w = format!("{x:#x} {kind:?}");
                check_modes(S, &all_modes(|rm| from_int(S, x, kind, rm)), &int_oracle(v), &w);
                check_modes(D, &all_modes(|rm| from_int(D, x, kind, rm)), &int_oracle(v), &w);
            }
        }

        #[test]
        fn convert_matches_host(a in any_s(), b in any_d()) {
            // Widening is exact.
            let h = f64::from(to_s(a));
            let ours = convert(S, D, box_single(a), Rounding::Rtz);
            let want = if h.is_nan() { QNAN_D } else { h.to_bits() };
            prop_assert_eq!(ours, out(want, if is_snan(S, u64::from(a)) { NV } else { 0 }));
            // Narrowing, Rne against the host, all modes against the oracle.
            let h = to_d(b) as f32;
            let ours = convert(D, S, b, Rounding::Rne);
            check_host(S, ours, u64::from(h.to_bits()), is_snan(D, b), false, &format!("{b:#x}"));
            if to_d(b).is_finite() {
                let outs = all_modes(|rm| convert(D, S, b, rm));
                check_modes(S, &outs, &single_value_oracle(to_d(b)), &format!("fcvt.s.d {b:#x}"));
            }
        }

        // ----- comparisons, min/max, classify, sign injection -----

        #[test]
        fn compare_min_max_single((a, b) in pair_s(any_s_boxed)) {
            check_misc(S, u64::from(a), u64::from(b));
        }

        #[test]
        fn compare_min_max_double((a, b) in pair_d(any_d_boxed)) {
            check_misc(D, a, b);
        }

        /// Any register contents at all, including improperly boxed singles:
        /// no panics, singles always come back boxed.
        #[test]
        fn total_on_any_input(a in any::<u64>(), b in any::<u64>(), c in any::<u64>(), rmb in 0u8..5, np: bool, nc: bool) {
            let rm = Rounding::from_bits(rmb).unwrap();
            for p in [S, D] {
                let results = [
                    add(p, a, b, rm), sub(p, a, b, rm), mul(p, a, b, rm), div(p, a, b, rm), sqrt(p, a, rm),
                    fma(p, a, b, c, np, nc, rm), min(p, a, b), max(p, a, b),
                    convert(p, if p == S { D } else { S }, a, rm),
                ];
                for (i, r) in results.iter().enumerate() {
                    let tp = if i == 8 { if p == S { D } else { S } } else { p };
                    if tp == S {
                        prop_assert_eq!(r.bits >> 32, 0xffff_ffff);
                    }
                }
                for kind in KINDS {
                    let _ = to_int(p, a, kind, rm);
                    let r = from_int(p, a, kind, rm);
                    if p == S {
                        prop_assert_eq!(r.bits >> 32, 0xffff_ffff);
                    }
                }
                prop_assert!(classify(p, a).count_ones() == 1 && classify(p, a) < 1 << 10);
                let _ = (eq(p, a, b), lt(p, a, b), le(p, a, b));
            }
            // An improperly boxed single is the canonical NaN everywhere.
            if a >> 32 != 0xffff_ffff {
                prop_assert_eq!(classify(S, a), 1 << 9);
                prop_assert_eq!(add(S, a, bs(1.0), rm), out(box_single(QNAN_S), 0));
                prop_assert_eq!(min(S, a, bs(1.0)), out(bs(1.0), 0));
                prop_assert_eq!(sign_inject(S, a, bs(-1.0), SignInject::Copy), box_single(0xffc0_0000));
            }
        }
    }

    /// Comparisons, min/max, classify and sign injection against host
    /// semantics.
    fn check_misc(p: Precision, a: u64, b: u64) {
        let (x, y) = (host(p, a), host(p, b));
        let (ra, rb) = (reg(p, a), reg(p, b));
        let any_nan = x.is_nan() || y.is_nan();
        let any_snan = is_snan(p, a) || is_snan(p, b);
        let w = format!("{p:?} {a:#x} {b:#x}");
        let quiet = if any_snan { NV } else { 0 };
        let signalling = if any_nan { NV } else { 0 };
        assert_eq!(eq(p, ra, rb), out(u64::from(x == y), quiet), "feq {w}");
        assert_eq!(lt(p, ra, rb), out(u64::from(x < y), signalling), "flt {w}");
        assert_eq!(le(p, ra, rb), out(u64::from(x <= y), signalling), "fle {w}");

        let canonical = match p {
            S => box_single(QNAN_S),
            D => QNAN_D,
        };
        let (want_min, want_max) = match (x.is_nan(), y.is_nan()) {
            (true, true) => (canonical, canonical),
            (true, false) => (rb, rb),
            (false, true) => (ra, ra),
            (false, false) => {
                if x < y || (x == y && x.is_sign_negative()) {
                    (ra, rb)
                } else {
                    (rb, ra)
                }
            }
        };
        assert_eq!(min(p, ra, rb), out(want_min, quiet), "fmin {w}");
        assert_eq!(max(p, ra, rb), out(want_max, quiet), "fmax {w}");

        let (sa, sb) = (x.is_sign_negative(), y.is_sign_negative());
        let sign_bit = match p {
            S => 1u64 << 31,
            D => 1u64 << 63,
        };
        let with_sign = |s: bool| reg(p, (a & !sign_bit) | if s { sign_bit } else { 0 });
        assert_eq!(
            sign_inject(p, ra, rb, SignInject::Copy),
            with_sign(sb),
            "fsgnj {w}"
        );
        assert_eq!(
            sign_inject(p, ra, rb, SignInject::Negate),
            with_sign(!sb),
            "fsgnjn {w}"
        );
        assert_eq!(
            sign_inject(p, ra, rb, SignInject::Xor),
            with_sign(sa != sb),
            "fsgnjx {w}"
        );
        if p == S {
            let h = to_s(a as u32).copysign(to_s(b as u32));
            assert_eq!(
                sign_inject(p, ra, rb, SignInject::Copy),
                bs(h),
                "fsgnj host {w}"
            );
        } else {
            assert_eq!(
                sign_inject(p, ra, rb, SignInject::Copy),
                x.copysign(y).to_bits()
            );
        }

        use std::num::FpCategory::*;
        let bit = match (x.classify(), sa) {
            (Infinite, true) => 0,
            (Normal, true) => 1,
            (Subnormal, true) => 2,
            (Zero, true) => 3,
            (Zero, false) => 4,
            (Subnormal, false) => 5,
            (Normal, false) => 6,
            (Infinite, false) => 7,
            (Nan, _) => {
                if is_snan(p, a) {
                    8
                } else {
                    9
                }
            }
        };
        // f32 subnormals are normal f64s, so classify the f32 itself.
        let bit = match (p, to_s(a as u32).classify()) {
            (S, Subnormal) => {
                if sa {
                    2
                } else {
                    5
                }
            }
            _ => bit,
        };
        assert_eq!(classify(p, ra), 1 << bit, "fclass {w}");
    }

    // ----- hand-picked cases ---------------------------------------------

    const ALL: u8 = NX | UF | OF | DZ | NV;

    #[test]
    fn rounding_from_bits() {
        assert_eq!(Rounding::from_bits(0), Some(Rounding::Rne));
        assert_eq!(Rounding::from_bits(1), Some(Rounding::Rtz));
        assert_eq!(Rounding::from_bits(2), Some(Rounding::Rdn));
        assert_eq!(Rounding::from_bits(3), Some(Rounding::Rup));
        assert_eq!(Rounding::from_bits(4), Some(Rounding::Rmm));
        for rm in 5..=255 {
            assert_eq!(Rounding::from_bits(rm), None);
        }
        assert_eq!((NX, UF, OF, DZ, NV), (1, 2, 4, 8, 16));
    }

    #[test]
    fn nan_boxing() {
        assert_eq!(box_single(0x3f80_0000), 0xffff_ffff_3f80_0000);
        assert_eq!(unbox_single(0xffff_ffff_3f80_0000), 0x3f80_0000);
        assert_eq!(unbox_single(0x0000_0000_3f80_0000), QNAN_S);
        assert_eq!(unbox_single(0xffff_fffe_3f80_0000), QNAN_S);
        assert_eq!(unbox_single(0x7fff_ffff_3f80_0000), QNAN_S);
        // An unboxed operand is a quiet NaN: no NV, canonical result.
        let bad = 0x0000_0000_3f80_0000;
        assert_eq!(
            add(S, bad, bs(1.0), Rounding::Rne),
            out(box_single(QNAN_S), 0)
        );
        assert_eq!(classify(S, bad), 1 << 9);
        assert_eq!(eq(S, bad, bad), out(0, 0));
        assert_eq!(lt(S, bad, bs(1.0)), out(0, NV));
        assert_eq!(max(S, bad, bs(2.0)), out(bs(2.0), 0));
        assert_eq!(
            to_int(S, bad, IntKind::W, Rounding::Rne),
            out(0x7fff_ffff, NV)
        );
        assert_eq!(convert(S, D, bad, Rounding::Rne), out(QNAN_D, 0));
        // Sign injection reads the canonical NaN and boxes the result.
        assert_eq!(
            sign_inject(S, bad, bs(-1.0), SignInject::Copy),
            0xffff_ffff_ffc0_0000
        );
        assert_eq!(sign_inject(S, bs(2.0), bad, SignInject::Negate), bs(-2.0));
        // Double operations ignore boxing altogether.
        assert_eq!(add(D, bd(1.0), bd(2.0), Rounding::Rne), out(bd(3.0), 0));
        assert_eq!(
            convert(D, S, bd(1.5), Rounding::Rne),
            out(0xffff_ffff_3fc0_0000, 0)
        );
    }

    #[test]
    fn nan_results_are_canonical() {
        // Payloads are not propagated, signs not kept.
        let payload_s = box_single(0xffc1_2345);
        let payload_d = 0xfff8_dead_beef_0001;
        assert_eq!(
            add(S, payload_s, bs(1.0), Rounding::Rne),
            out(box_single(QNAN_S), 0)
        );
        assert_eq!(mul(D, payload_d, bd(1.0), Rounding::Rne), out(QNAN_D, 0));
        assert_eq!(sqrt(D, SNAN_D, Rounding::Rne), out(QNAN_D, NV));
        assert_eq!(
            div(S, box_single(SNAN_S), bs(1.0), Rounding::Rne),
            out(box_single(QNAN_S), NV)
        );
        assert_eq!(
            convert(D, S, SNAN_D, Rounding::Rne),
            out(box_single(QNAN_S), NV)
        );
        assert_eq!(
            convert(S, D, box_single(0xffc1_2345), Rounding::Rne),
            out(QNAN_D, 0)
        );
        // Invalid operations.
        let inf = bd(f64::INFINITY);
        let ninf = bd(f64::NEG_INFINITY);
        assert_eq!(add(D, inf, ninf, Rounding::Rne), out(QNAN_D, NV));
        assert_eq!(sub(D, inf, inf, Rounding::Rne), out(QNAN_D, NV));
        assert_eq!(mul(D, bd(0.0), ninf, Rounding::Rne), out(QNAN_D, NV));
        assert_eq!(div(D, bd(0.0), bd(-0.0), Rounding::Rne), out(QNAN_D, NV));
        assert_eq!(div(D, inf, ninf, Rounding::Rne), out(QNAN_D, NV));
        assert_eq!(sqrt(D, bd(-1.0), Rounding::Rne), out(QNAN_D, NV));
        assert_eq!(sqrt(D, ninf, Rounding::Rne), out(QNAN_D, NV));
        assert_eq!(
            sqrt(S, bs(-f32::MIN_POSITIVE), Rounding::Rne),
            out(box_single(QNAN_S), NV)
        );
    }

    #[test]
    fn division_by_zero_and_infinities() {
        let r = Rounding::Rne;
        assert_eq!(div(D, bd(1.0), bd(0.0), r), out(bd(f64::INFINITY), DZ));
        assert_eq!(div(D, bd(-1.0), bd(0.0), r), out(bd(f64::NEG_INFINITY), DZ));
        assert_eq!(
            div(S, bs(1e-45), bs(-0.0), r),
            out(bs(f32::NEG_INFINITY), DZ)
        );
        assert_eq!(
            div(D, bd(f64::INFINITY), bd(0.0), r),
            out(bd(f64::INFINITY), 0)
        );
        assert_eq!(div(D, bd(1.0), bd(f64::NEG_INFINITY), r), out(bd(-0.0), 0));
        assert_eq!(div(D, bd(0.0), bd(5.0), r), out(bd(0.0), 0));
        assert_eq!(sqrt(D, bd(-0.0), r), out(bd(-0.0), 0));
        assert_eq!(sqrt(S, bs(f32::INFINITY), r), out(bs(f32::INFINITY), 0));
        assert_eq!(sqrt(D, bd(2.0), r), out(bd(std::f64::consts::SQRT_2), NX));
        assert_eq!(sqrt(S, bs(0.25), r), out(bs(0.5), 0));
    }

    #[test]
    fn zero_signs() {
        for p in [S, D] {
            let one = match p {
                S => bs(1.0),
                D => bd(1.0),
            };
            let (z, nz) = (reg(p, 0), reg(p, if p == S { 1 << 31 } else { 1 << 63 }));
            for rm in MODES {
                let want = if rm == Rounding::Rdn { nz } else { z };
                assert_eq!(sub(p, one, one, rm), out(want, 0), "{p:?} {rm:?}");
                assert_eq!(add(p, z, nz, rm), out(want, 0), "{p:?} {rm:?}");
                assert_eq!(add(p, nz, nz, rm), out(nz, 0));
                assert_eq!(add(p, z, z, rm), out(z, 0));
                // fmadd 1*1 + -1 is an exact zero too.
                assert_eq!(fma(p, one, one, one, false, true, rm), out(want, 0));
                // fnmadd(+0 * 1, +0) = -(+0) - (+0) = -0 in every mode.
                assert_eq!(fma(p, z, one, z, true, true, rm), out(nz, 0));
                // fmsub(+0 * 1, +0) = +0 - +0.
                assert_eq!(fma(p, z, one, z, false, true, rm), out(want, 0));
                // x + 0 keeps x exactly.
                assert_eq!(add(p, one, nz, rm), out(one, 0));
                // An integer zero converts to +0.
                assert_eq!(from_int(p, 0, IntKind::L, rm), out(z, 0));
            }
        }
    }

    #[test]
    fn fma_specials() {
        let r = Rounding::Rne;
        let (zero, inf, one) = (bd(0.0), bd(f64::INFINITY), bd(1.0));
        // 0 * inf is invalid even with a quiet NaN addend (RISC-V).
        assert_eq!(fma(D, zero, inf, QNAN_D, false, false, r), out(QNAN_D, NV));
        assert_eq!(fma(D, inf, zero, QNAN_D, true, true, r), out(QNAN_D, NV));
        assert_eq!(
            fma(
                S,
                bs(0.0),
                bs(f32::INFINITY),
                box_single(QNAN_S),
                false,
                false,
                r
            ),
            out(box_single(QNAN_S), NV)
        );
        assert_eq!(fma(D, zero, inf, one, false, false, r), out(QNAN_D, NV));
        assert_eq!(fma(D, zero, inf, SNAN_D, false, false, r), out(QNAN_D, NV));
        assert_eq!(fma(D, one, one, SNAN_D, false, false, r), out(QNAN_D, NV));
        assert_eq!(fma(D, QNAN_D, one, one, false, false, r), out(QNAN_D, 0));
        assert_eq!(fma(D, QNAN_D, zero, inf, false, false, r), out(QNAN_D, 0));
        // inf - inf inside the fma.
        assert_eq!(fma(D, inf, one, inf, false, true, r), out(QNAN_D, NV));
        assert_eq!(fma(D, inf, one, inf, true, false, r), out(QNAN_D, NV));
        assert_eq!(
            fma(D, inf, one, inf, true, true, r),
            out(bd(f64::NEG_INFINITY), 0)
        );
        assert_eq!(
            fma(D, one, one, inf, false, true, r),
            out(bd(f64::NEG_INFINITY), 0)
        );
        // One rounding: (1 + 2^-30)^2 - 1 keeps the 2^-60 term that a
        // separate multiply would have rounded away.
        let x = bd(1.0 + pow2(-30));
        assert_eq!(
            fma(D, x, x, one, false, true, r),
            out(bd(pow2(-29) + pow2(-60)), 0)
        );
        assert_eq!(sub(D, mul(D, x, x, r).bits, one, r), out(bd(pow2(-29)), 0));
        // The four variants.
        let (a, b, c) = (bd(2.0), bd(3.0), bd(1.0));
        assert_eq!(fma(D, a, b, c, false, false, r).bits, bd(7.0));
        assert_eq!(fma(D, a, b, c, false, true, r).bits, bd(5.0));
        assert_eq!(fma(D, a, b, c, true, false, r).bits, bd(-5.0));
        assert_eq!(fma(D, a, b, c, true, true, r).bits, bd(-7.0));
        // A product that underflows only before the addition is kept exactly.
        let tiny = bd(pow2(-600));
        assert_eq!(
            fma(D, tiny, tiny, one, false, false, Rounding::Rup),
            out(bd(1.0 + f64::EPSILON), NX)
        );
        assert_eq!(
            fma(D, tiny, tiny, one, true, false, Rounding::Rdn),
            out(bd(1.0 - f64::EPSILON / 2.0), NX)
        );
        assert_eq!(
            fma(D, tiny, tiny, one, false, false, Rounding::Rne),
            out(one, NX)
        );
    }

    #[test]
    fn min_max_rules() {
        for p in [S, D] {
            let (z, nz) = (reg(p, 0), reg(p, if p == S { 1 << 31 } else { 1 << 63 }));
            let one = if p == S { bs(1.0) } else { bd(1.0) };
            let (q, sn, canon) = match p {
                S => (
                    box_single(0xffc0_0001),
                    box_single(SNAN_S),
                    box_single(QNAN_S),
                ),
                D => (0xfff8_0000_0000_0001, SNAN_D, QNAN_D),
            };
            assert_eq!(min(p, nz, z), out(nz, 0));
            assert_eq!(min(p, z, nz), out(nz, 0));
            assert_eq!(max(p, nz, z), out(z, 0));
            assert_eq!(max(p, z, nz), out(z, 0));
            assert_eq!(min(p, q, one), out(one, 0));
            assert_eq!(max(p, one, q), out(one, 0));
            assert_eq!(min(p, sn, one), out(one, NV));
            assert_eq!(max(p, one, sn), out(one, NV));
            assert_eq!(min(p, q, q), out(canon, 0));
            assert_eq!(max(p, q, sn), out(canon, NV));
        }
        assert_eq!(min(D, bd(-3.0), bd(2.0)), out(bd(-3.0), 0));
        assert_eq!(max(D, bd(-3.0), bd(f64::NEG_INFINITY)), out(bd(-3.0), 0));
    }

    #[test]
    fn comparisons() {
        let (q, sn) = (QNAN_D, SNAN_D);
        let one = bd(1.0);
        assert_eq!(eq(D, q, one), out(0, 0));
        assert_eq!(eq(D, sn, one), out(0, NV));
        assert_eq!(eq(D, q, q), out(0, 0));
        assert_eq!(lt(D, q, one), out(0, NV));
        assert_eq!(le(D, one, q), out(0, NV));
        assert_eq!(eq(D, bd(0.0), bd(-0.0)), out(1, 0));
        assert_eq!(lt(D, bd(-0.0), bd(0.0)), out(0, 0));
        assert_eq!(le(D, bd(0.0), bd(-0.0)), out(1, 0));
        assert_eq!(lt(S, bs(-2.0), bs(1.0)), out(1, 0));
        assert_eq!(le(S, bs(f32::INFINITY), bs(f32::INFINITY)), out(1, 0));
        assert_eq!(lt(S, bs(f32::NEG_INFINITY), bs(f32::MIN)), out(1, 0));
    }

    #[test]
    fn classify_each_class() {
        let cases_s: [(f32, u32); 8] = [
            (f32::NEG_INFINITY, 0),
            (-1.5, 1),
            (-1e-40, 2),
            (-0.0, 3),
            (0.0, 4),
            (1e-40, 5),
            (f32::MAX, 6),
            (f32::INFINITY, 7),
        ];
        for (v, bit) in cases_s {
            assert_eq!(classify(S, bs(v)), 1 << bit, "{v:e}");
            // Single subnormals are normal doubles.
            let dbit = match bit {
                2 => 1,
                5 => 6,
                b => b,
            };
            assert_eq!(classify(D, bd(f64::from(v))), 1 << dbit, "{v:e}");
        }
        let cases_d: [(f64, u32); 8] = [
            (f64::NEG_INFINITY, 0),
            (-f64::MIN_POSITIVE, 1),
            (-5e-324, 2),
            (-0.0, 3),
            (0.0, 4),
            (f64::MIN_POSITIVE / 2.0, 5),
            (1.0, 6),
            (f64::INFINITY, 7),
        ];
        for (v, bit) in cases_d {
            assert_eq!(classify(D, bd(v)), 1 << bit, "{v:e}");
        }
        assert_eq!(classify(S, box_single(SNAN_S)), 1 << 8);
        assert_eq!(classify(S, box_single(0xff80_0001)), 1 << 8);
        assert_eq!(classify(S, box_single(QNAN_S)), 1 << 9);
        assert_eq!(classify(S, box_single(0xffff_ffff)), 1 << 9);
        assert_eq!(classify(D, SNAN_D), 1 << 8);
        assert_eq!(classify(D, QNAN_D), 1 << 9);
        assert_eq!(classify(D, u64::MAX), 1 << 9);
    }

    #[test]
    fn sign_injection() {
        let (a, b) = (bs(2.0), bs(-3.0));
        assert_eq!(sign_inject(S, a, b, SignInject::Copy), bs(-2.0));
        assert_eq!(sign_inject(S, a, b, SignInject::Negate), bs(2.0));
        assert_eq!(sign_inject(S, bs(-2.0), b, SignInject::Xor), bs(2.0));
        assert_eq!(
            sign_inject(D, bd(-2.0), bd(-2.0), SignInject::Negate),
            bd(2.0)
        ); // fabs
        assert_eq!(
            sign_inject(D, bd(2.0), bd(2.0), SignInject::Negate),
            bd(-2.0)
        ); // fneg
           // NaN bits move untouched, without flags.
        assert_eq!(
            sign_inject(D, SNAN_D, bd(-1.0), SignInject::Copy),
            SNAN_D | 1 << 63
        );
        assert_eq!(
            sign_inject(S, box_single(SNAN_S), bs(-1.0), SignInject::Copy),
            box_single(SNAN_S | 1 << 31)
        );
    }

    #[test]
    fn to_int_riscv_values() {
        let r = Rounding::Rne;
        let nan = box_single(QNAN_S);
        assert_eq!(to_int(S, nan, IntKind::W, r), out(0x7fff_ffff, NV));
        assert_eq!(to_int(S, nan, IntKind::Wu, r), out(u64::MAX, NV));
        assert_eq!(to_int(S, nan, IntKind::L, r), out(i64::MAX as u64, NV));
        assert_eq!(
            to_int(D, QNAN_D | 1 << 63, IntKind::Lu, r),
            out(u64::MAX, NV)
        );
        let ninf = bs(f32::NEG_INFINITY);
        assert_eq!(
            to_int(S, ninf, IntKind::W, r),
            out(0xffff_ffff_8000_0000, NV)
        );
        assert_eq!(to_int(S, ninf, IntKind::Wu, r), out(0, NV));
        assert_eq!(to_int(S, ninf, IntKind::L, r), out(i64::MIN as u64, NV));
        assert_eq!(
            to_int(S, bs(f32::INFINITY), IntKind::W, r),
            out(0x7fff_ffff, NV)
        );
        assert_eq!(to_int(S, bs(-1.0), IntKind::Wu, r), out(0, NV));
        assert_eq!(to_int(S, bs(-0.5), IntKind::Wu, Rounding::Rtz), out(0, NX));
        assert_eq!(to_int(S, bs(-0.5), IntKind::Wu, Rounding::Rne), out(0, NX));
        assert_eq!(to_int(S, bs(-0.5), IntKind::Wu, Rounding::Rdn), out(0, NV));
        assert_eq!(to_int(S, bs(-0.5), IntKind::Lu, Rounding::Rmm), out(0, NV));
        assert_eq!(to_int(D, bd(pow2(64)), IntKind::Lu, r), out(u64::MAX, NV));
        assert_eq!(
            to_int(D, bd(pow2(64) - 2048.0), IntKind::Lu, r),
            out(u64::MAX - 2047, 0)
        );
        assert_eq!(
            to_int(D, bd(-pow2(63)), IntKind::L, r),
            out(i64::MIN as u64, 0)
        );
        assert_eq!(
            to_int(D, bd(pow2(63)), IntKind::L, r),
            out(i64::MAX as u64, NV)
        );
        assert_eq!(
            to_int(D, bd(-2147483648.5), IntKind::W, Rounding::Rtz),
            out(0xffff_ffff_8000_0000, NX)
        );
        assert_eq!(
            to_int(D, bd(-2147483648.5), IntKind::W, Rounding::Rdn),
            out(0xffff_ffff_8000_0000, NV)
        );
        assert_eq!(
            to_int(D, bd(2147483647.5), IntKind::W, Rounding::Rne),
            out(0x7fff_ffff, NV)
        );
        assert_eq!(
            to_int(D, bd(2147483647.5), IntKind::W, Rounding::Rtz),
            out(0x7fff_ffff, NX)
        );
        // 32-bit unsigned results are sign-extended.
        assert_eq!(
            to_int(S, bs(3e9), IntKind::Wu, r),
            out(0xffff_ffff_b2d0_5e00, 0)
        );
        assert_eq!(
            to_int(D, bd(4294967295.0), IntKind::Wu, r),
            out(u64::MAX, 0)
        );
        assert_eq!(
            to_int(D, bd(4294967296.0), IntKind::Wu, r),
            out(u64::MAX, NV)
        );
        assert_eq!(to_int(S, bs(-7.0), IntKind::W, r), out(-7i64 as u64, 0));
        // Ties: rmm goes away from zero, rne to even.
        for (v, rne, rmm) in [
            (2.5, 2, 3),
            (-2.5, -2, -3),
            (0.5, 0, 1),
            (3.5, 4, 4),
            (-0.5, 0, -1),
        ] {
            assert_eq!(
                to_int(D, bd(v), IntKind::L, Rounding::Rne),
                out(rne as u64, NX),
                "{v}"
            );
            assert_eq!(
                to_int(D, bd(v), IntKind::L, Rounding::Rmm),
                out(rmm as u64, NX),
                "{v}"
            );
            assert_eq!(
                to_int(S, bs(v as f32), IntKind::W, Rounding::Rmm),
                out(rmm as u64, NX),
                "{v}"
            );
        }
        assert_eq!(to_int(D, bd(2.5), IntKind::L, Rounding::Rup), out(3, NX));
        assert_eq!(
            to_int(D, bd(-2.5), IntKind::L, Rounding::Rup),
            out(-2i64 as u64, NX)
        );
        assert_eq!(
            to_int(D, bd(-2.5), IntKind::L, Rounding::Rdn),
            out(-3i64 as u64, NX)
        );
        assert_eq!(
            to_int(D, bd(-2.5), IntKind::L, Rounding::Rtz),
            out(-2i64 as u64, NX)
        );
        assert_eq!(to_int(D, bd(5e-324), IntKind::L, Rounding::Rup), out(1, NX));
        assert_eq!(to_int(D, bd(-0.0), IntKind::Lu, r), out(0, 0));
        assert_eq!(
            to_int(D, bd(1e300), IntKind::L, r),
            out(i64::MAX as u64, NV)
        );
    }

    #[test]
    fn from_int_values() {
        let r = Rounding::Rne;
        assert_eq!(from_int(S, u64::MAX, IntKind::W, r), out(bs(-1.0), 0));
        assert_eq!(
            from_int(S, u64::MAX, IntKind::Wu, r),
            out(bs(4294967296.0), NX)
        );
        assert_eq!(
            from_int(D, u64::MAX, IntKind::Wu, r),
            out(bd(4294967295.0), 0)
        );
        assert_eq!(
            from_int(D, u64::MAX, IntKind::Lu, Rounding::Rtz),
            out(bd(pow2(64) - 2048.0), NX)
        );
        assert_eq!(
            from_int(D, 0xffff_ffff_0000_0007, IntKind::W, r),
            out(bd(7.0), 0)
        );
        assert_eq!(
            from_int(D, i64::MIN as u64, IntKind::L, r),
            out(bd(-pow2(63)), 0)
        );
        // 2^24 + 1 is a tie in single precision.
        let x = (1 << 24) + 1;
        assert_eq!(
            from_int(S, x, IntKind::L, Rounding::Rne),
            out(bs(16777216.0), NX)
        );
        assert_eq!(
            from_int(S, x, IntKind::L, Rounding::Rmm),
            out(bs(16777218.0), NX)
        );
        assert_eq!(
            from_int(S, x.wrapping_neg(), IntKind::L, Rounding::Rmm),
            out(bs(-16777218.0), NX)
        );
        assert_eq!(
            from_int(S, x.wrapping_neg(), IntKind::L, Rounding::Rdn),
            out(bs(-16777218.0), NX)
        );
        assert_eq!(
            from_int(S, x.wrapping_neg(), IntKind::L, Rounding::Rup),
            out(bs(-16777216.0), NX)
        );
    }

    #[test]
    fn overflow_by_mode() {
        let max = bs(f32::MAX);
        let two = bs(2.0);
        let (inf, ninf, nmax) = (bs(f32::INFINITY), bs(f32::NEG_INFINITY), bs(f32::MIN));
        let want = [
            (Rounding::Rne, inf, ninf),
            (Rounding::Rmm, inf, ninf),
            (Rounding::Rtz, max, nmax),
            (Rounding::Rdn, max, ninf),
            (Rounding::Rup, inf, nmax),
        ];
        for (rm, pos, neg) in want {
            assert_eq!(mul(S, max, two, rm), out(pos, OF | NX), "{rm:?}");
            assert_eq!(mul(S, nmax, two, rm), out(neg, OF | NX), "{rm:?}");
            assert_eq!(convert(D, S, bd(1e300), rm), out(pos, OF | NX), "{rm:?}");
        }
        // Just above MAX but rounding back to it is not an overflow.
        let half_ulp = pow2(103);
        let x = bd(f64::from(f32::MAX) + half_ulp / 2.0);
        assert_eq!(convert(D, S, x, Rounding::Rne), out(max, NX));
        assert_eq!(
            convert(D, S, x, Rounding::Rup),
            out(bs(f32::INFINITY), OF | NX)
        );
        let tie = bd(f64::from(f32::MAX) + half_ulp);
        assert_eq!(convert(D, S, tie, Rounding::Rne), out(inf, OF | NX));
        assert_eq!(convert(D, S, tie, Rounding::Rtz), out(max, NX));
        let dmax = bd(f64::MAX);
        assert_eq!(
            add(D, dmax, dmax, Rounding::Rne),
            out(bd(f64::INFINITY), OF | NX)
        );
        assert_eq!(add(D, dmax, dmax, Rounding::Rtz), out(dmax, OF | NX));
        // Exact infinities are not overflows.
        assert_eq!(
            add(D, bd(f64::INFINITY), dmax, Rounding::Rne),
            out(bd(f64::INFINITY), 0)
        );
    }

    #[test]
    fn underflow_after_rounding() {
        let min_normal = bs(f32::MIN_POSITIVE); // 2^-126
        let below = bs(1.0 - pow2(-24) as f32); // 1 - 2^-24
                                                // (1 - 2^-24) * 2^-126 is exact in 24 bits with an unbounded
                                                // exponent, so tiny, but rounds (a subnormal tie) up to 2^-126.
        assert_eq!(
            mul(S, below, min_normal, Rounding::Rne),
            out(min_normal, UF | NX)
        );
        assert_eq!(
            mul(S, below, min_normal, Rounding::Rtz),
            out(box_single(0x007f_ffff), UF | NX)
        );
        assert_eq!(
            mul(S, below, min_normal, Rounding::Rup),
            out(min_normal, UF | NX)
        );
        // 2^-126 - 2^-152 rounds to 2^-126 even with an unbounded exponent:
        // not tiny, so inexact only.
        let x = bd(pow2(-126) - pow2(-152));
        assert_eq!(convert(D, S, x, Rounding::Rne), out(min_normal, NX));
        assert_eq!(convert(D, S, x, Rounding::Rmm), out(min_normal, NX));
        assert_eq!(convert(D, S, x, Rounding::Rup), out(min_normal, NX));
        assert_eq!(
            convert(D, S, x, Rounding::Rtz),
            out(box_single(0x007f_ffff), UF | NX)
        );
        assert_eq!(
            convert(D, S, x, Rounding::Rdn),
            out(box_single(0x007f_ffff), UF | NX)
        );
        // 2^-126 - 2^-151 is a tie at full precision, and ties to the even
        // 2^-126: not tiny for rne or rmm.
        let x = bd(pow2(-126) - pow2(-151));
        assert_eq!(convert(D, S, x, Rounding::Rne), out(min_normal, NX));
        assert_eq!(convert(D, S, x, Rounding::Rmm), out(min_normal, NX));
        // 2^-126 - 2^-150 is exact at full precision: tiny.
        let x = bd(pow2(-126) - pow2(-150));
        assert_eq!(convert(D, S, x, Rounding::Rne), out(min_normal, UF | NX));
        assert_eq!(convert(D, S, x, Rounding::Rup), out(min_normal, UF | NX));
        // Negative side mirrors it.
        let x = bd(-(pow2(-126) - pow2(-152)));
        assert_eq!(
            convert(D, S, x, Rounding::Rdn),
            out(bs(-f32::MIN_POSITIVE), NX)
        );
        assert_eq!(
            convert(D, S, x, Rounding::Rup),
            out(box_single(0x807f_ffff), UF | NX)
        );
        // Double: (1 - 2^-53) * 2^-1022.
        let below = bd(1.0 - pow2(-53));
        let dmin = bd(f64::MIN_POSITIVE);
        assert_eq!(mul(D, below, dmin, Rounding::Rne), out(dmin, UF | NX));
        assert_eq!(
            mul(D, below, dmin, Rounding::Rtz),
            out(0x000f_ffff_ffff_ffff, UF | NX)
        );
        // An exact subnormal result raises nothing.
        assert_eq!(
            mul(S, bs(pow2(-140) as f32), bs(pow2(-5) as f32), Rounding::Rne),
            out(bs(pow2(-145) as f32), 0)
        );
        assert_eq!(
            sub(D, bd(3.0 * pow2(-1074)), bd(pow2(-1074)), Rounding::Rne),
            out(bd(pow2(-1073)), 0)
        );
        // Half the smallest subnormal: a tie between 0 and it.
        let min_sub = bs(f32::from_bits(1));
        let half = bs(0.5);
        assert_eq!(mul(S, min_sub, half, Rounding::Rne), out(bs(0.0), UF | NX));
        assert_eq!(mul(S, min_sub, half, Rounding::Rmm), out(min_sub, UF | NX));
        assert_eq!(mul(S, min_sub, half, Rounding::Rup), out(min_sub, UF | NX));
        assert_eq!(
            mul(S, min_sub, bs(-0.5), Rounding::Rdn),
            out(box_single(0x8000_0001), UF | NX)
        );
        assert_eq!(
            mul(S, min_sub, bs(-0.5), Rounding::Rtz),
            out(bs(-0.0), UF | NX)
        );
        // Far below: a sticky-only value.
        let tiny = bd(pow2(-1000));
        assert_eq!(mul(D, tiny, tiny, Rounding::Rup), out(1, UF | NX));
        assert_eq!(mul(D, tiny, tiny, Rounding::Rne), out(0, UF | NX));
        assert_eq!(
            div(D, bd(pow2(-1074)), bd(pow2(1000)), Rounding::Rdn),
            out(0, UF | NX)
        );
        // A subnormal result that is exact after rounding in sub/add.
        let (t, z) = (bd(pow2(-540)), bd(0.0));
        assert_eq!(
            fma(D, t, t, z, false, false, Rounding::Rne),
            out(0, UF | NX)
        );
        assert_eq!(
            fma(D, t, t, z, false, false, Rounding::Rup),
            out(1, UF | NX)
        );
        assert_eq!(
            fma(D, t, t, z, true, false, Rounding::Rdn),
            out(1 << 63 | 1, UF | NX)
        );
    }

    #[test]
    fn rmm_ties_in_arithmetic() {
        // 1 + 2^-24 is halfway between 1 and 1 + 2^-23.
        let (one, eps) = (bs(1.0), bs(pow2(-24) as f32));
        assert_eq!(add(S, one, eps, Rounding::Rne), out(one, NX));
        assert_eq!(
            add(S, one, eps, Rounding::Rmm),
            out(bs(1.0 + f32::EPSILON), NX)
        );
        assert_eq!(
            sub(S, bs(-1.0), eps, Rounding::Rmm),
            out(bs(-1.0 - f32::EPSILON), NX)
        );
        // 1 + 3 * 2^-24 is halfway between two odd/even neighbours: rne
        // rounds up there too.
        let three = bs(3.0 * pow2(-24) as f32);
        assert_eq!(
            add(S, one, three, Rounding::Rne),
            out(bs(1.0 + 2.0 * f32::EPSILON), NX)
        );
        assert_eq!(
            add(S, one, three, Rounding::Rmm),
            out(bs(1.0 + 2.0 * f32::EPSILON), NX)
        );
        // Double: 1 + 2^-53.
        assert_eq!(
            add(D, bd(1.0), bd(pow2(-53)), Rounding::Rmm),
            out(bd(1.0 + f64::EPSILON), NX)
        );
        assert_eq!(
            add(D, bd(1.0), bd(pow2(-53)), Rounding::Rne),
            out(bd(1.0), NX)
        );
    }

    #[test]
    fn flags_mask_is_five_bits() {
        let r = div(D, bd(1.0), bd(3.0), Rounding::Rne);
        assert_eq!(r, out(bd(1.0 / 3.0), NX));
        assert_eq!(r.flags & !ALL, 0);
    }
}
