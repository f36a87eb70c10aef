//! What a VM size costs: the workspace's location (its ARM resource's `location`) and that
//! location's `vmSizes` list (VirtualMachineSizeListResult: `gpus`, `estimatedVMPrices`). A
//! price is the list's own Linux retail price for the tier, or none — never a guess.

use std::collections::BTreeMap;
use std::fmt;

use reqwest::Method;
use serde::Serialize;
use serde_json::Value;

use super::{AzureError, Client};

/// An hourly price as the service estimates it (`unitOfMeasure` OneHour).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Price {
    pub per_hour: f64,
    /// `billingCurrency` (the definition's enum holds only USD).
    pub currency: String,
}

impl fmt::Display for Price {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.currency == "USD" {
            write!(f, "${:.2}/h", self.per_hour)
        } else {
            write!(f, "{:.2} {}/h", self.per_hour, self.currency)
        }
    }
}

/// One size of the list.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VmSize {
    pub gpus: Option<u32>,
    /// (osType, vmTier) → price, for the answers in hours.
    prices: BTreeMap<(String, String), Price>,
}

/// The sizes of one location, by lower-case name (computes write `STANDARD_NC6`, the list
/// `Standard_NC6`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VmSizes {
    pub location: String,
    sizes: BTreeMap<String, VmSize>,
}

impl VmSizes {
    /// From a VirtualMachineSizeListResult (`{"value": [VirtualMachineSize…]}`). Prices whose
    /// unit is not OneHour, or which lack a field the definition requires, are left out.
    pub fn parse(location: &str, list: &Value) -> VmSizes {
        let mut sizes = BTreeMap::new();
        for s in list["value"].as_array().into_iter().flatten() {
            let Some(name) = s["name"].as_str() else {
                continue;
            };
            let mut size = VmSize {
                gpus: s["gpus"].as_u64().and_then(|g| u32::try_from(g).ok()),
                prices: BTreeMap::new(),
            };
            let est = &s["estimatedVMPrices"];
            let currency = est["billingCurrency"].as_str();
            if let (Some(currency), Some("OneHour")) = (currency, est["unitOfMeasure"].as_str()) {
                for p in est["values"].as_array().into_iter().flatten() {
                    if let (Some(v), Some(os), Some(tier)) = (
                        p["retailPrice"].as_f64(),
                        p["osType"].as_str(),
                        p["vmTier"].as_str(),
                    ) {
                        size.prices.insert(
                            (os.to_owned(), tier.to_owned()),
                            Price {
                                per_hour: v,
                                currency: currency.to_owned(),
                            },
                        );
                    }
                }
            }
            sizes.insert(name.to_ascii_lowercase(), size);
        }
        VmSizes {
            location: location.to_owned(),
            sizes,
        }
    }

    pub fn get(&self, size: &str) -> Option<&VmSize> {
        self.sizes.get(&size.to_ascii_lowercase())
    }

    pub fn gpus(&self, size: &str) -> Option<u32> {
        self.get(size)?.gpus
    }

    /// The Linux price of `size` in `tier` (`Standard` for dedicated VMs, `LowPriority`, `Spot`).
    pub fn price(&self, size: &str, tier: &str) -> Option<Price> {
        self.get(size)?
            .prices
            .get(&("Linux".to_owned(), tier.to_owned()))
            .cloned()
    }
}

/// The workspace's location (`GET` of the workspace: the tracked resource's `location`).
pub fn location(client: &Client) -> Result<String, AzureError> {
    let ws = client.ws(Method::GET, "", None)?.body;
    Ok(ws["location"].as_str().unwrap_or_default().to_owned())
}

/// The location's sizes: `GET /subscriptions/{s}/providers/Microsoft.MachineLearningServices/
/// locations/{location}/vmSizes`. An empty or odd location (the path parameter's pattern is
/// `^[-\w\._]+$`) gives an empty list rather than a request.
pub fn fetch(client: &Client) -> Result<VmSizes, AzureError> {
    let loc = location(client)?;
    if loc.is_empty()
        || !loc
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Ok(VmSizes::parse(&loc, &Value::Null));
    }
    let path = format!(
        "/subscriptions/{}/providers/Microsoft.MachineLearningServices/locations/{loc}/vmSizes",
        client.workspace.subscription_id
    );
    let list = client.request(Method::GET, &path, None)?.body;
    Ok(VmSizes::parse(&loc, &list))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn prices_are_the_lists_own_linux_price_per_tier_or_none() {
        // Shaped as the 2025-12-01 example VirtualMachineSize/list.json.
        let list = json!({"value": [
            {"name": "Standard_DS3_v2", "family": "standardDSv2Family", "vCPUs": 4, "gpus": 0,
             "estimatedVMPrices": {"billingCurrency": "USD", "unitOfMeasure": "OneHour", "values": [
                {"retailPrice": 0.2, "osType": "Windows", "vmTier": "LowPriority"},
                {"retailPrice": 0.06, "osType": "Linux", "vmTier": "LowPriority"},
                {"retailPrice": 0.5, "osType": "Windows", "vmTier": "Standard"},
                {"retailPrice": 0.29, "osType": "Linux", "vmTier": "Standard"}]}},
            {"name": "Standard_NC6", "gpus": 1},
            {"name": "Standard_X", "gpus": 2,
             "estimatedVMPrices": {"billingCurrency": "USD", "unitOfMeasure": "OneMinute",
                "values": [{"retailPrice": 1.0, "osType": "Linux", "vmTier": "Standard"}]}},
        ]});
        let s = VmSizes::parse("eastus", &list);
        let p = s.price("STANDARD_DS3_V2", "Standard").unwrap();
        assert_eq!(p.per_hour, 0.29);
        assert_eq!(p.to_string(), "$0.29/h");
        assert_eq!(
            s.price("Standard_DS3_v2", "LowPriority").unwrap().per_hour,
            0.06
        );
        assert_eq!(s.price("Standard_DS3_v2", "Spot"), None);
        assert_eq!(s.gpus("standard_nc6"), Some(1));
        assert_eq!(s.price("Standard_NC6", "Standard"), None, "no prices: none");
        assert_eq!(
            s.price("Standard_X", "Standard"),
            None,
            "not per hour: none"
        );
        assert_eq!(s.gpus("Standard_ND96"), None, "not in the list");
        assert_eq!(VmSizes::parse("x", &Value::Null).gpus("a"), None);
        let eur = Price {
            per_hour: 1.5,
            currency: "EUR".into(),
        };
        assert_eq!(eur.to_string(), "1.50 EUR/h");
    }
}
