//! Lennard-Jones molecular dynamics: velocity Verlet over all pairs within a cut-off, in a
//! periodic cubic box (reduced units: sigma = epsilon = mass = 1).

use super::Rng;

/// Cut-off radius of the potential, in sigma.
const CUTOFF: f64 = 2.5;
/// Time step, in reduced units.
const DT: f64 = 0.002;
/// Number density of the box.
const DENSITY: f64 = 0.8;

/// Runs `steps` velocity-Verlet steps of `n` particles, started on a jittered cubic
/// lattice with random velocities, and returns a checksum of the final total energy and
/// positions (bit patterns of f64 results: deterministic for IEEE arithmetic without
/// fused multiply-adds, which neither rustc's default native target nor wasm uses).
// Index loops, as the textbook writes them: the benchmark measures this very code.
#[allow(clippy::needless_range_loop)]
pub fn md_steps(n: usize, steps: u64) -> u64 {
    let side = (n as f64 / DENSITY).cbrt();
    let per_row = (n as f64).cbrt().ceil() as usize;
    let spacing = side / per_row as f64;
    let mut rng = Rng::new(5);
    let mut pos = Vec::with_capacity(n);
    'fill: for i in 0..per_row {
        for j in 0..per_row {
            for k in 0..per_row {
                if pos.len() == n {
                    break 'fill;
                }
                let jitter = |r: &mut Rng| (r.next_f64() - 0.5) * 0.1 * spacing;
                pos.push([
                    (i as f64 + 0.5) * spacing + jitter(&mut rng),
                    (j as f64 + 0.5) * spacing + jitter(&mut rng),
                    (k as f64 + 0.5) * spacing + jitter(&mut rng),
                ]);
            }
        }
    }
    let mut vel: Vec<[f64; 3]> = (0..n)
        .map(|_| {
            [
                rng.next_f64() - 0.5,
                rng.next_f64() - 0.5,
                rng.next_f64() - 0.5,
            ]
        })
        .collect();
    let mut force = vec![[0.0; 3]; n];
    let mut potential = forces(&pos, &mut force, side);
    for _ in 0..steps {
        for i in 0..n {
            for d in 0..3 {
                vel[i][d] += 0.5 * DT * force[i][d];
                pos[i][d] += DT * vel[i][d];
                pos[i][d] -= side * (pos[i][d] / side).floor();
            }
        }
        potential = forces(&pos, &mut force, side);
        for i in 0..n {
            for d in 0..3 {
                vel[i][d] += 0.5 * DT * force[i][d];
            }
        }
    }
    let kinetic: f64 = vel
        .iter()
        .map(|v| 0.5 * (v[0] * v[0] + v[1] * v[1] + v[2] * v[2]))
        .sum();
    pos.iter().fold((kinetic + potential).to_bits(), |acc, p| {
        acc.rotate_left(7) ^ p[0].to_bits() ^ p[1].to_bits().rotate_left(21) ^ p[2].to_bits()
    })
}

/// The Lennard-Jones forces on every particle (written to `force`) and the potential
/// energy, over all pairs closer than [`CUTOFF`] (minimum image in a box of `side`).
#[allow(clippy::needless_range_loop)]
fn forces(pos: &[[f64; 3]], force: &mut [[f64; 3]], side: f64) -> f64 {
    let rc2 = CUTOFF * CUTOFF;
    let half = 0.5 * side;
    let mut potential = 0.0;
    force.iter_mut().for_each(|f| *f = [0.0; 3]);
    for i in 0..pos.len() {
        let pi = pos[i];
        let mut fi = [0.0; 3];
        for j in i + 1..pos.len() {
            let mut d = [pi[0] - pos[j][0], pi[1] - pos[j][1], pi[2] - pos[j][2]];
            for c in &mut d {
                if *c > half {
                    *c -= side;
                } else if *c < -half {
                    *c += side;
                }
            }
            let r2 = d[0] * d[0] + d[1] * d[1] + d[2] * d[2];
            if r2 < rc2 {
                let inv2 = 1.0 / r2;
                let inv6 = inv2 * inv2 * inv2;
                potential += 4.0 * inv6 * (inv6 - 1.0);
                let f = 24.0 * inv2 * inv6 * (2.0 * inv6 - 1.0);
                for c in 0..3 {
                    fi[c] += f * d[c];
                    force[j][c] -= f * d[c];
                }
            }
        }
        for c in 0..3 {
            force[i][c] += fi[c];
        }
    }
    potential
}
