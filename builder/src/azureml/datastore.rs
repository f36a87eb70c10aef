//! The workspace's datastores through ARM: the default one (`Datastores_List` with
//! `isDefault=true`) or one by name, as an Azure Blob account, container and endpoint suffix,
//! with the kind of credentials it was registered with; the URLs and `azureml://` URIs of its paths.

use reqwest::Method;
use serde_json::Value;

use super::{AzureError, Client};

/// How a datastore was registered to reach its storage (`credentials.credentialsType`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    /// Identity-based: whoever reads or writes brings their own Entra ID token.
    None,
    /// The storage account's key (kept by the workspace, never read back).
    AccountKey,
    /// A SAS token (kept by the workspace, never read back).
    Sas,
    /// Another kind (ServicePrincipal, Certificate), named as the service spells it.
    Other(String),
}

impl Credentials {
    fn of(kind: &str) -> Credentials {
        match kind {
            "None" => Credentials::None,
            "AccountKey" => Credentials::AccountKey,
            "Sas" => Credentials::Sas,
            k => Credentials::Other(k.to_owned()),
        }
    }

    /// Whether the workspace holds a key or SAS for it: its storage may take nothing else.
    pub fn is_key_based(&self) -> bool {
        matches!(self, Credentials::AccountKey | Credentials::Sas)
    }

    /// The service's spelling (`AccountKey`, `Sas`, `None`, …).
    pub fn as_str(&self) -> &str {
        match self {
            Credentials::None => "None",
            Credentials::AccountKey => "AccountKey",
            Credentials::Sas => "Sas",
            Credentials::Other(k) => k,
        }
    }
}

/// An Azure Blob datastore of the workspace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datastore {
    pub name: String,
    pub account: String,
    pub container: String,
    /// The storage endpoint suffix (`core.windows.net`, or a sovereign cloud's).
    pub endpoint: String,
    /// `https` (the only protocol envbuild sends data over).
    pub protocol: String,
    pub credentials: Credentials,
    pub is_default: bool,
}

/// Public Azure's storage endpoint suffix (the datastore's `endpoint` when it names none).
pub const PUBLIC_ENDPOINT: &str = "core.windows.net";

impl Datastore {
    /// From a DatastoreResource. Only Azure Blob datastores hold what envbuild needs.
    pub fn from_resource(v: &Value) -> Result<Datastore, AzureError> {
        let name = v["name"].as_str().unwrap_or_default().to_owned();
        let p = &v["properties"];
        let kind = p["datastoreType"].as_str().unwrap_or("unknown");
        if kind != "AzureBlob" {
            return Err(AzureError::NotBlobDatastore {
                name,
                kind: kind.to_owned(),
            });
        }
        let field = |f: &'static str| -> Result<String, AzureError> {
            p[f].as_str()
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .ok_or_else(|| AzureError::DatastoreField {
                    name: name.clone(),
                    field: f,
                })
        };
        let (account, container) = (field("accountName")?, field("containerName")?);
        // Names that cannot be a storage account or container would make a host or path of
        // whatever the service said: refuse them.
        let account_ok = (3..=24).contains(&account.len())
            && account
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        let container_ok = (3..=63).contains(&container.len())
            && container
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !account_ok {
            return Err(AzureError::DatastoreField {
                name,
                field: "accountName",
            });
        }
        if !container_ok {
            return Err(AzureError::DatastoreField {
                name,
                field: "containerName",
            });
        }
        let endpoint = p["endpoint"]
            .as_str()
            .filter(|s| !s.is_empty())
            .unwrap_or(PUBLIC_ENDPOINT)
            .to_owned();
        if !endpoint
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        {
            return Err(AzureError::DatastoreField {
                name,
                field: "endpoint",
            });
        }
        let protocol = p["protocol"]
            .as_str()
            .filter(|s| !s.is_empty())
            .unwrap_or("https")
            .to_owned();
        if protocol != "https" {
            return Err(AzureError::DatastoreField {
                name,
                field: "protocol",
            });
        }
        Ok(Datastore {
            credentials: Credentials::of(
                p["credentials"]["credentialsType"]
                    .as_str()
                    .unwrap_or("None"),
            ),
            is_default: p["isDefault"].as_bool().unwrap_or(false),
            name,
            account,
            container,
            endpoint,
            protocol,
        })
    }

    /// The blob service of the account: `https://{account}.blob.{endpoint}`.
    pub fn account_url(&self) -> String {
        format!("https://{}.blob.{}", self.account, self.endpoint)
    }

    /// The https URL of `path` (a folder or blob name, `/`-separated) in the container.
    pub fn url_of(&self, path: &str) -> String {
        format!(
            "{}/{}/{}",
            self.account_url(),
            self.container,
            path.trim_matches('/')
        )
    }

    /// `azureml://datastores/{name}/paths/{path}` (a trailing `/` kept: a folder).
    pub fn azureml_uri(&self, path: &str) -> String {
        format!(
            "azureml://datastores/{}/paths/{}",
            self.name,
            path.trim_start_matches('/')
        )
    }
}

/// The workspace's default datastore: `GET datastores?isDefault=true`.
pub fn default(client: &Client) -> Result<Datastore, AzureError> {
    let page = client
        .ws(Method::GET, "datastores?isDefault=true", None)?
        .body;
    let found = page["value"]
        .as_array()
        .and_then(|v| {
            // The filter is the service's; a list that ignored it still says which is default.
            v.iter()
                .find(|d| d["properties"]["isDefault"].as_bool() == Some(true))
        })
        .cloned();
    match found {
        Some(d) => Datastore::from_resource(&d),
        None => Err(AzureError::NoDefaultDatastore {
            workspace: client.workspace.name.clone(),
        }),
    }
}

/// The datastore `name`: `GET datastores/{name}`.
pub fn get(client: &Client, name: &str) -> Result<Datastore, AzureError> {
    if !super::valid_name(name) {
        return Err(AzureError::BadName {
            what: "datastore",
            name: name.to_owned(),
            rule: super::NameRule::Asset,
        });
    }
    match client.get_opt(&format!("datastores/{name}"))? {
        Some(d) => Datastore::from_resource(&d),
        None => Err(AzureError::NoDatastore {
            name: name.to_owned(),
            workspace: client.workspace.name.clone(),
        }),
    }
}

/// A datastore path of an `azureml://` URI: (datastore, path). `…/paths/P` as jobs' inputs and
/// outputs name it; the artifact store's default output (`azureml://datastores/NAME/ExperimentRun/…`)
/// has no `paths/` and names its path directly.
pub fn parse_uri(uri: &str) -> Option<(String, String)> {
    let rest = uri.strip_prefix("azureml://datastores/")?;
    let (name, path) = rest.split_once('/')?;
    let path = path.strip_prefix("paths/").unwrap_or(path);
    if !super::valid_name(name) || path.split('/').any(|s| s == "..") {
        return None;
    }
    Some((name.to_owned(), path.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn resource(creds: &str) -> Value {
        json!({
            "id": "/subscriptions/s/resourceGroups/r/providers/Microsoft.MachineLearningServices/workspaces/w/datastores/workspaceblobstore",
            "name": "workspaceblobstore",
            "type": "Microsoft.MachineLearningServices/workspaces/datastores",
            "properties": {
                "description": null, "tags": {}, "properties": null, "isDefault": true,
                "credentials": {"credentialsType": creds, "secrets": {"secretsType": creds}},
                "datastoreType": "AzureBlob",
                "accountName": "stenvbuild01", "containerName": "azureml-blobstore-0123",
                "endpoint": "core.windows.net", "protocol": "https",
                "serviceDataAccessAuthIdentity": "None",
            },
        })
    }

    #[test]
    fn a_blob_datastore_gives_its_account_container_and_urls() {
        let d = Datastore::from_resource(&resource("AccountKey")).unwrap();
        assert_eq!(d.name, "workspaceblobstore");
        assert!(d.is_default && d.credentials.is_key_based());
        assert_eq!(
            d.account_url(),
            "https://stenvbuild01.blob.core.windows.net"
        );
        assert_eq!(
            d.url_of("LocalUpload/abc/src/"),
            "https://stenvbuild01.blob.core.windows.net/azureml-blobstore-0123/LocalUpload/abc/src"
        );
        assert_eq!(
            d.azureml_uri("LocalUpload/abc/data/"),
            "azureml://datastores/workspaceblobstore/paths/LocalUpload/abc/data/"
        );
        let mut none = resource("None");
        none["properties"]["credentials"] = json!({"credentialsType": "None"});
        none["properties"]["endpoint"] = json!("core.chinacloudapi.cn");
        let d = Datastore::from_resource(&none).unwrap();
        assert_eq!(d.credentials, Credentials::None);
        assert!(!d.credentials.is_key_based());
        assert_eq!(
            d.account_url(),
            "https://stenvbuild01.blob.core.chinacloudapi.cn"
        );
    }

    #[test]
    fn what_is_not_a_usable_blob_datastore_is_refused_by_name() {
        let mut file = resource("AccountKey");
        file["properties"]["datastoreType"] = json!("AzureFile");
        let e = Datastore::from_resource(&file).unwrap_err().to_string();
        assert!(
            e.contains("workspaceblobstore") && e.contains("AzureFile"),
            "{e}"
        );
        for (field, bad) in [
            ("accountName", json!("evil.example.com/x")),
            ("accountName", Value::Null),
            ("containerName", json!("A_B")),
            ("endpoint", json!("x/y")),
            ("protocol", json!("http")),
        ] {
            let mut r = resource("None");
            r["properties"][field] = bad;
            let e = Datastore::from_resource(&r).unwrap_err().to_string();
            assert!(e.contains(field) && e.contains("workspaceblobstore"), "{e}");
        }
    }

    #[test]
    fn azureml_uris_name_the_datastore_and_path() {
        assert_eq!(
            parse_uri("azureml://datastores/workspaceblobstore/paths/azureml/j1/model/"),
            Some(("workspaceblobstore".into(), "azureml/j1/model/".into()))
        );
        assert_eq!(
            parse_uri("azureml://datastores/workspaceartifactstore/ExperimentRun/dcid.j1"),
            Some((
                "workspaceartifactstore".into(),
                "ExperimentRun/dcid.j1".into()
            ))
        );
        for bad in [
            "azureml://jobs/j1/outputs/model",
            "https://a.blob.core.windows.net/c/p",
            "azureml://datastores/ws/paths/a/../../b",
            "azureml://datastores/bad name/paths/a",
        ] {
            assert_eq!(parse_uri(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_answers_read_here_are_valid_datastore_resources() {
        let list = json!({"value": [resource("AccountKey"), resource("Sas")]});
        crate::azureml::spec_check::assert_valid("DatastoreResourceArmPaginatedResult", &list);
        let mut none = resource("None");
        none["properties"]["credentials"] = json!({"credentialsType": "None"});
        crate::azureml::spec_check::assert_valid("DatastoreResource", &none);
    }
}
