//! Which Coupa OAuth scope an API call needs: the one table of it.
//!
//! Source: `shared/COUPA.md` §2.3 (Coupa's scope page as transcribed for R34.3, the
//! controller → path mapping inferred from Compass resource pages). Reads (GET/HEAD)
//! need `<family>.read`; writes (POST/PUT/PATCH/DELETE) need `<family>.write`. A
//! resource not in the table has no known scope: callers must say "unknown" rather than
//! guess. Instances differ, so config accepts any scope string; this table only advises.

use http::Method;

/// `/api/<resource>` → scope family. Sorted by resource for binary search.
pub static RESOURCE_SCOPES: &[(&str, &str)] = &[
    ("account_types", "core.accounting"),
    ("account_validation_rules", "core.accounting"),
    ("accounts", "core.accounting"),
    ("addresses", "core.common"),
    ("announcements", "core.common"),
    ("approvals", "core.approval"),
    ("budget_lines", "core.budget"),
    ("business_groups", "core.common"),
    ("comments", "core.comment"),
    ("commodities", "core.common"),
    ("contracts", "core.contract"),
    ("currencies", "core.common"),
    ("data_file_sources", "core.integration"),
    ("departments", "core.common"),
    ("exchange_rates", "core.common"),
    ("expense_reports", "core.expense"),
    ("integration_runs", "core.integration"),
    ("integrations", "core.integration"),
    ("inventory_transactions", "core.inventory.receiving"),
    ("invoices", "core.invoice"),
    ("items", "core.item"),
    ("lookup_values", "core.common"),
    ("lookups", "core.common"),
    ("matching_allocations", "core.invoice"),
    ("payment_terms", "core.common"),
    ("projects", "core.project"),
    ("purchase_order_changes", "core.purchase_order"),
    ("purchase_order_lines", "core.purchase_order"),
    ("purchase_orders", "core.purchase_order"),
    ("quote_requests", "core.sourcing"),
    ("receiving_transactions", "core.inventory.receiving"),
    ("remit_to_addresses", "core.supplier"),
    ("requisition_lines", "core.requisition"),
    ("requisitions", "core.requisition"),
    ("roles", "core.common"),
    ("shipping_terms", "core.common"),
    ("supplier_information", "core.supplier"),
    ("supplier_items", "core.catalog"),
    ("supplier_sites", "core.supplier"),
    ("suppliers", "core.supplier"),
    ("tax_codes", "core.common"),
    ("tax_registrations", "core.invoice"),
    ("uoms", "core.common"),
    ("user_groups", "core.user_group"),
    ("users", "core.user"),
];

/// The scope a call needs, or `None` when the resource is not in the table.
pub fn required_scope(method: &Method, path: &str) -> Option<String> {
    let resource = path.strip_prefix("/api/")?.split(['/', '?']).next()?;
    let idx = RESOURCE_SCOPES
        .binary_search_by(|(r, _)| (*r).cmp(resource))
        .ok()?;
    let family = RESOURCE_SCOPES[idx].1;
    let right = if matches!(*method, Method::GET | Method::HEAD) {
        "read"
    } else {
        "write"
    };
    Some(format!("{family}.{right}"))
}

/// A collection path a `<family>.read` scope allows (`/api/invoices` for
/// `core.invoice.read`): the resource named after the family, else its first in the
/// table. `None` for other scopes or families not in the table.
pub fn read_endpoint(scope: &str) -> Option<String> {
    let family = scope.strip_suffix(".read")?;
    let mut resources = RESOURCE_SCOPES.iter().filter(|(_, f)| *f == family);
    let last = family.rsplit('.').next()?;
    let named = RESOURCE_SCOPES
        .iter()
        .find(|(r, f)| *f == family && r.trim_end_matches('s') == last);
    let (resource, _) = named.or_else(|| resources.next())?;
    Some(format!("/api/{resource}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_sorted_for_binary_search() {
        assert!(RESOURCE_SCOPES.windows(2).all(|w| w[0].0 < w[1].0));
    }

    #[test]
    fn maps_methods_and_resources() {
        assert_eq!(
            required_scope(&Method::GET, "/api/invoices/12").as_deref(),
            Some("core.invoice.read")
        );
        assert_eq!(
            required_scope(&Method::POST, "/api/invoices").as_deref(),
            Some("core.invoice.write")
        );
        assert_eq!(
            required_scope(&Method::PUT, "/api/purchase_orders/25").as_deref(),
            Some("core.purchase_order.write")
        );
        assert_eq!(
            required_scope(&Method::GET, "/api/users?limit=1").as_deref(),
            Some("core.user.read")
        );
        assert_eq!(required_scope(&Method::GET, "/api/unheard_of"), None);
        assert_eq!(
            read_endpoint("core.invoice.read").as_deref(),
            Some("/api/invoices")
        );
        assert_eq!(
            read_endpoint("core.supplier.read").as_deref(),
            Some("/api/suppliers")
        );
        assert_eq!(
            read_endpoint("core.common.read").as_deref(),
            Some("/api/addresses")
        );
        assert_eq!(read_endpoint("core.invoice.write"), None);
        assert_eq!(read_endpoint("custom.thing.read"), None);
        assert_eq!(required_scope(&Method::GET, "/oauth2/token"), None);
    }
}
