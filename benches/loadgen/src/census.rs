//! Prints where the heap went between two `/debug/heap` snapshots of a `heap-census` build:
//! live bytes per client, and the allocation sizes that each client added.

use serde_json::Value;

/// Size classes whose live count grew by fewer allocations per client than this are left out.
const MIN_PER_CLIENT: f64 = 0.2;

/// `(class floor, live allocations, live bytes)` for each class in a snapshot.
fn classes(snapshot: &Value) -> Vec<(i64, i64, i64)> {
    snapshot["classes"]
        .as_array()
        .map(|all| {
            all.iter()
                .filter_map(|c| Some((c[0].as_i64()?, c[1].as_i64()?, c[2].as_i64()?)))
                .collect()
        })
        .unwrap_or_default()
}

/// Prints the growth from `before` to `after`, divided over `clients`.
pub fn print_growth(what: &str, before: &Value, after: &Value, clients: usize) {
    let per = |x: i64| x as f64 / clients.max(1) as f64;
    let live = |s: &Value| s["liveBytes"].as_i64().unwrap_or(0);
    let allocs = |s: &Value| s["liveAllocs"].as_i64().unwrap_or(0);
    println!(
        "  heap census, {what}: {:.0} live bytes in {:.1} allocations per client",
        per(live(after) - live(before)),
        per(allocs(after) - allocs(before)),
    );
    let old = classes(before);
    let mut grown: Vec<(i64, f64, f64)> = classes(after)
        .into_iter()
        .map(|(floor, n, bytes)| {
            let (n0, b0) = old
                .iter()
                .find(|c| c.0 == floor)
                .map_or((0, 0), |c| (c.1, c.2));
            (floor, per(n - n0), per(bytes - b0))
        })
        .filter(|&(_, n, _)| n >= MIN_PER_CLIENT)
        .collect();
    grown.sort_by(|a, b| b.2.total_cmp(&a.2));
    println!("    size class (B)   allocs/client   bytes/client");
    for (floor, n, bytes) in grown {
        println!("    {floor:>14}   {n:>13.2}   {bytes:>12.0}");
    }
}
