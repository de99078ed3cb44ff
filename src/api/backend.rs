//! The three API-server calls the HTTP API makes besides its writes: TokenReview (who is the
//! caller), SubjectAccessReview (may they) and TokenRequest (a token for a plugin). Behind a trait
//! so that unit tests and the benchmark can run the router without an API server.
use std::collections::BTreeMap;

use futures::future::BoxFuture;
use k8s_openapi::{
    api::{
        authentication::v1::{TokenRequest, TokenRequestSpec, TokenReview, TokenReviewSpec},
        authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec},
        core::v1::ServiceAccount,
    },
    jiff::Timestamp,
};
use kube::{Api, Client, api::PostParams};

use super::error::ApiError;
use crate::{resources::GROUP, runtime::call::with_timeout};

/// The user a token belongs to, as TokenReview reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct User {
    pub username: String,
    pub uid: Option<String>,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
}

/// What a route needs the caller to be allowed: a Kubernetes verb on a resource of
/// `plugin-operator.dev` in a namespace (all namespaces when empty), optionally on one object.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Access {
    pub verb: &'static str,
    pub resource: &'static str,
    pub namespace: String,
    pub name: Option<String>,
}

impl Access {
    pub fn new(verb: &'static str, resource: &'static str, namespace: &str) -> Self {
        Self {
            verb,
            resource,
            namespace: namespace.to_owned(),
            name: None,
        }
    }

    pub fn named(mut self, name: &str) -> Self {
        self.name = Some(name.to_owned());
        self
    }

    /// Says what was refused, the way the API server says it.
    pub fn refusal(&self, user: &User) -> String {
        let what = match &self.name {
            Some(name) => format!("{} {:?}", self.resource, name),
            None => format!("resource {:?}", self.resource),
        };
        let scope = if self.namespace.is_empty() {
            "at the cluster scope".to_owned()
        } else {
            format!("in the namespace {:?}", self.namespace)
        };
        format!(
            "User {:?} cannot {} {what} in API group {GROUP:?} {scope}",
            user.username, self.verb
        )
    }
}

/// A token issued for a ServiceAccount.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssuedToken {
    pub token: String,
    pub expires: Timestamp,
}

/// The API-server calls behind authentication, authorization and plugin tokens.
pub trait Backend: Send + Sync + 'static {
    /// TokenReview: the user, or `None` when the API server does not accept the token.
    fn review_token<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Option<User>, ApiError>>;
    /// SubjectAccessReview: whether `user` may do `access`.
    fn review_access<'a>(
        &'a self,
        user: &'a User,
        access: &'a Access,
    ) -> BoxFuture<'a, Result<bool, ApiError>>;
    /// TokenRequest for a ServiceAccount, valid for `audience` during `seconds`.
    fn request_token<'a>(
        &'a self,
        namespace: &'a str,
        service_account: &'a str,
        audience: &'a str,
        seconds: i64,
    ) -> BoxFuture<'a, Result<IssuedToken, ApiError>>;
}

/// The real one: the operator's client asks the API server.
pub struct KubeBackend {
    client: Client,
}

impl KubeBackend {
    pub fn new(client: Client) -> Self {
        Self { client }
    }
}

impl Backend for KubeBackend {
    fn review_token<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Option<User>, ApiError>> {
        Box::pin(async move {
            let api: Api<TokenReview> = Api::all(self.client.clone());
            let review = TokenReview {
                spec: TokenReviewSpec {
                    token: Some(token.to_owned()),
                    audiences: None,
                },
                ..Default::default()
            };
            let reviewed = with_timeout(api.create(&PostParams::default(), &review))
                .await
                .map_err(|e| ApiError::from_kube("TokenReview", &e))?;
            let status = reviewed.status.unwrap_or_default();
            if !status.authenticated.unwrap_or(false) {
                return Ok(None);
            }
            let user = status.user.unwrap_or_default();
            Ok(Some(User {
                username: user.username.unwrap_or_default(),
                uid: user.uid,
                groups: user.groups.unwrap_or_default(),
                extra: user.extra.unwrap_or_default(),
            }))
        })
    }

    fn review_access<'a>(
        &'a self,
        user: &'a User,
        access: &'a Access,
    ) -> BoxFuture<'a, Result<bool, ApiError>> {
        Box::pin(async move {
            let api: Api<SubjectAccessReview> = Api::all(self.client.clone());
            let review = SubjectAccessReview {
                spec: SubjectAccessReviewSpec {
                    user: Some(user.username.clone()),
                    uid: user.uid.clone(),
                    groups: Some(user.groups.clone()),
                    extra: Some(user.extra.clone()),
                    resource_attributes: Some(ResourceAttributes {
                        group: Some(GROUP.to_owned()),
                        resource: Some(access.resource.to_owned()),
                        verb: Some(access.verb.to_owned()),
                        namespace: Some(access.namespace.clone()).filter(|n| !n.is_empty()),
                        name: access.name.clone(),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                ..Default::default()
            };
            let reviewed = with_timeout(api.create(&PostParams::default(), &review))
                .await
                .map_err(|e| ApiError::from_kube("SubjectAccessReview", &e))?;
            Ok(reviewed.status.is_some_and(|s| s.allowed))
        })
    }

    fn request_token<'a>(
        &'a self,
        namespace: &'a str,
        service_account: &'a str,
        audience: &'a str,
        seconds: i64,
    ) -> BoxFuture<'a, Result<IssuedToken, ApiError>> {
        Box::pin(async move {
            let api: Api<ServiceAccount> = Api::namespaced(self.client.clone(), namespace);
            let request = TokenRequest {
                spec: TokenRequestSpec {
                    audiences: vec![audience.to_owned()],
                    expiration_seconds: Some(seconds),
                    bound_object_ref: None,
                },
                ..Default::default()
            };
            let issued = with_timeout(api.create_token_request(
                service_account,
                &PostParams::default(),
                &request,
            ))
            .await
            .map_err(|e| ApiError::from_kube("TokenRequest", &e))?;
            let status = issued.status.ok_or_else(|| {
                ApiError::Internal("TokenRequest: the API server issued no token".into())
            })?;
            Ok(IssuedToken {
                token: status.token,
                expires: status.expiration_timestamp.0,
            })
        })
    }
}
