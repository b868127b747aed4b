//! The tonic adapter: `broker.v1.Broker` over the domain [`ControlPlane`].
//!
//! Every RPC has one shape, written once in `ControlService::unary` (answered on the async runtime) and
//! `ControlService::blocking` (on the blocking pool, for calls that run guest code or touch the disk):
//! take the caller's [`Identity`] that the authentication interceptor put into the request's extensions,
//! convert the message into the plane's arguments (`convert.rs`), call the plane, convert its answer,
//! and map a refusal to a status (`status.rs`). No RPC body authenticates, scopes or validates by hand:
//! authentication is the interceptor's (`auth.rs`), scoping and validation the plane's.
//!
//! The service is only ever served behind its interceptor: [`ControlService::with_auth`] is its one
//! public constructor. A request that reaches it without an identity anyway is UNAUTHENTICATED, never
//! the admin.

use std::sync::Arc;

use broker_proto::pb;
use broker_proto::pb::broker_server::BrokerServer;
use tokio_stream::adapters::Map;
use tokio_stream::StreamExt;
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Status};

use super::auth::{AuthInterceptor, Identity};
use super::convert::{self, region_ref, required};
use super::plane::{
    self, ControlPlane, LogEntry, LogLines, RegionEvent, ScenarioProgress, ScenarioRun, Watch,
};
use super::status::{ApiError, ApiResult};

/// The `broker.v1.Broker` service as the daemon serves it: behind the authentication interceptor.
pub type AuthenticatedBroker = InterceptedService<BrokerServer<ControlService>, AuthInterceptor>;

/// The server stream of `WatchRegion`: the plane's [`Watch`], each change as a message. Dropping it
/// (the client went away) unregisters the watcher.
pub type WatchStream = Map<Watch, fn(RegionEvent) -> Result<pb::RegionEvent, Status>>;

/// The server stream of `InstanceLogs`: the plane's [`LogLines`], each line as a message.
pub type LogStream = Map<LogLines, fn(LogEntry) -> Result<pb::LogLine, Status>>;

/// The server stream of `RunScenario`: progress messages, then the report.
pub type ScenarioStream =
    Map<ScenarioRun, fn(ApiResult<ScenarioProgress>) -> Result<pb::ScenarioProgress, Status>>;

/// The tonic service: a cheap handle over a shared [`ControlPlane`].
#[derive(Clone)]
pub struct ControlService {
    plane: Arc<ControlPlane>,
}

/// The caller the interceptor identified; none (served without it) is unauthenticated, never the admin.
fn caller<T>(req: &Request<T>) -> ApiResult<Identity> {
    req.extensions()
        .get::<Identity>()
        .cloned()
        .ok_or(ApiError::Unauthenticated("the call did not pass the authentication interceptor"))
}

fn respond<T>(r: ApiResult<T>) -> Result<Response<T>, Status> {
    r.map(Response::new).map_err(Status::from)
}

impl ControlService {
    /// Private: the service is served only behind its interceptor ([`ControlService::with_auth`]).
    fn new(plane: Arc<ControlPlane>) -> ControlService {
        ControlService { plane }
    }

    /// The service over `plane`, wrapped in the interceptor that authenticates every call against the
    /// plane's tokens (as they change), with `max_message_bytes` as the largest request and response.
    /// The only way to build the service, so none can serve it unauthenticated by accident.
    pub fn with_auth(plane: Arc<ControlPlane>, max_message_bytes: usize) -> AuthenticatedBroker {
        let interceptor = AuthInterceptor::new(Arc::clone(plane.auth()));
        let server = BrokerServer::new(ControlService::new(plane))
            .max_decoding_message_size(max_message_bytes)
            .max_encoding_message_size(max_message_bytes);
        InterceptedService::new(server, interceptor)
    }

    /// An RPC answered on the async runtime: `f` converts the request, calls the plane as the caller
    /// and converts the answer.
    fn unary<Req, Resp>(
        &self,
        req: Request<Req>,
        f: impl FnOnce(&Arc<ControlPlane>, &Identity, Req) -> ApiResult<Resp>,
    ) -> Result<Response<Resp>, Status> {
        let who = caller(&req)?;
        respond(f(&self.plane, &who, req.into_inner()))
    }

    /// An RPC answered on the blocking pool (guest code runs, or the disk is written): as
    /// [`ControlService::unary`], off the async runtime.
    async fn blocking<Req, Resp>(
        &self,
        req: Request<Req>,
        f: impl FnOnce(&Arc<ControlPlane>, &Identity, Req) -> ApiResult<Resp> + Send + 'static,
    ) -> Result<Response<Resp>, Status>
    where
        Req: Send + 'static,
        Resp: Send + 'static,
    {
        let who = caller(&req)?;
        let plane = Arc::clone(&self.plane);
        let req = req.into_inner();
        respond(plane::on_blocking_pool(move || f(&plane, &who, req)).await)
    }
}

#[tonic::async_trait]
impl pb::broker_server::Broker for ControlService {
    async fn create_tenant(
        &self,
        req: Request<pb::CreateTenantRequest>,
    ) -> Result<Response<pb::Tenant>, Status> {
        self.unary(req, |p, who, r| {
            let t = p.create_tenant(who, &r.name, r.quotas.as_ref().map(convert::quotas_from))?;
            Ok(convert::tenant_to(&t))
        })
    }

    async fn set_quotas(&self, req: Request<pb::SetQuotasRequest>) -> Result<Response<pb::Tenant>, Status> {
        self.unary(req, |p, who, r| {
            let t = p.set_quotas(who, &r.tenant, r.quotas.as_ref().map(convert::quotas_from))?;
            Ok(convert::tenant_to(&t))
        })
    }

    async fn list_tenants(
        &self,
        req: Request<pb::ListTenantsRequest>,
    ) -> Result<Response<pb::ListTenantsResponse>, Status> {
        self.unary(req, |p, who, _| {
            Ok(pb::ListTenantsResponse {
                tenants: p.list_tenants(who).iter().map(convert::tenant_to).collect(),
            })
        })
    }

    async fn issue_token(
        &self,
        req: Request<pb::IssueTokenRequest>,
    ) -> Result<Response<pb::IssueTokenResponse>, Status> {
        self.unary(req, |p, who, r| {
            Ok(pb::IssueTokenResponse { token: p.issue_token(who, &r.tenant, r.rotate)? })
        })
    }

    async fn upload_module(
        &self,
        req: Request<pb::UploadModuleRequest>,
    ) -> Result<Response<pb::Module>, Status> {
        // Async in the plane (it waits for a compile slot), so neither `unary` nor `blocking`.
        let who = caller(&req)?;
        let r = req.into_inner();
        let module = self.plane.upload_module(&who, &r.tenant, &r.name, r.wasm).await;
        respond(module.map(|m| convert::module_to(&m.tenant, m.value)))
    }

    async fn list_modules(
        &self,
        req: Request<pb::ListModulesRequest>,
    ) -> Result<Response<pb::ListModulesResponse>, Status> {
        self.unary(req, |p, who, r| Ok(convert::modules_to(p.list_modules(who, &r.tenant)?)))
    }

    async fn delete_module(&self, req: Request<pb::ModuleRef>) -> Result<Response<pb::Empty>, Status> {
        self.unary(req, |p, who, r| p.delete_module(who, &r.tenant, &r.name).map(|()| pb::Empty {}))
    }

    async fn start_instance(
        &self,
        req: Request<pb::StartInstanceRequest>,
    ) -> Result<Response<pb::Instance>, Status> {
        self.blocking(req, |p, who, r| {
            Ok(convert::instance_msg(&p.start_instance(who, &r.tenant, &convert::new_instance(&r))?))
        })
        .await
    }

    async fn call_instance(
        &self,
        req: Request<pb::CallInstanceRequest>,
    ) -> Result<Response<pb::CallInstanceResponse>, Status> {
        self.blocking(req, |p, who, r| {
            convert::results_to(&p.call_instance(
                who,
                &r.tenant,
                &r.instance,
                &r.export,
                convert::Args(&r.args),
            )?)
        })
        .await
    }

    async fn stop_instance(&self, req: Request<pb::InstanceRef>) -> Result<Response<pb::Empty>, Status> {
        self.blocking(req, |p, who, r| p.stop_instance(who, &r.tenant, &r.name).map(|()| pb::Empty {})).await
    }

    async fn delete_instance(&self, req: Request<pb::InstanceRef>) -> Result<Response<pb::Empty>, Status> {
        self.blocking(req, |p, who, r| p.delete_instance(who, &r.tenant, &r.name).map(|()| pb::Empty {}))
            .await
    }

    async fn restart_instance(
        &self,
        req: Request<pb::InstanceRef>,
    ) -> Result<Response<pb::Instance>, Status> {
        self.blocking(req, |p, who, r| {
            Ok(convert::instance_msg(&p.restart_instance(who, &r.tenant, &r.name)?))
        })
        .await
    }

    async fn get_instance(&self, req: Request<pb::InstanceRef>) -> Result<Response<pb::Instance>, Status> {
        self.unary(req, |p, who, r| Ok(convert::instance_msg(&p.get_instance(who, &r.tenant, &r.name)?)))
    }

    async fn list_instances(
        &self,
        req: Request<pb::ListInstancesRequest>,
    ) -> Result<Response<pb::ListInstancesResponse>, Status> {
        self.unary(req, |p, who, r| Ok(convert::instances_to(&p.list_instances(who, &r.tenant)?)))
    }

    async fn create_region(
        &self,
        req: Request<pb::CreateRegionRequest>,
    ) -> Result<Response<pb::Region>, Status> {
        // Blocking: a replicated region waits for the cluster to take it.
        self.blocking(req, |p, who, r| Ok(convert::region_msg(p.create_region(who, &r.tenant, &r)?))).await
    }

    async fn set_member_rights(
        &self,
        req: Request<pb::SetMemberRightsRequest>,
    ) -> Result<Response<pb::Region>, Status> {
        self.blocking(req, |p, who, r| {
            let (region, rights) = convert::member_rights_from(&r)?;
            Ok(convert::region_msg(p.set_member_rights(who, region, rights)?))
        })
        .await
    }

    async fn get_region(&self, req: Request<pb::RegionRef>) -> Result<Response<pb::Region>, Status> {
        self.unary(req, |p, who, r| Ok(convert::region_msg(p.get_region(who, region_ref(&r))?)))
    }

    async fn list_regions(
        &self,
        req: Request<pb::ListRegionsRequest>,
    ) -> Result<Response<pb::ListRegionsResponse>, Status> {
        self.unary(req, |p, who, r| Ok(convert::regions_to(p.list_regions(who, &r.tenant)?)))
    }

    async fn read_region(
        &self,
        req: Request<pb::ReadRegionRequest>,
    ) -> Result<Response<pb::ReadRegionResponse>, Status> {
        self.unary(req, |p, who, r| {
            let region = region_ref(required("region", r.region.as_ref())?);
            Ok(convert::read_to(p.read_region(who, region, r.offset, r.len)?))
        })
    }

    async fn write_region(
        &self,
        req: Request<pb::WriteRegionRequest>,
    ) -> Result<Response<pb::WriteRegionResponse>, Status> {
        // Blocking: a write to a replica waits for the region's home on another node.
        self.blocking(req, |p, who, r| {
            let region = region_ref(required("region", r.region.as_ref())?);
            Ok(pb::WriteRegionResponse { version: p.write_region(who, region, r.offset, &r.data)? })
        })
        .await
    }

    async fn grant(&self, req: Request<pb::GrantRequest>) -> Result<Response<pb::GrantResponse>, Status> {
        self.unary(req, |p, who, r| {
            let region = region_ref(required("region", r.region.as_ref())?);
            Ok(pb::GrantResponse { grant_id: p.grant(who, region, &convert::new_grant(&r))? })
        })
    }

    async fn revoke(&self, req: Request<pb::RevokeRequest>) -> Result<Response<pb::Empty>, Status> {
        self.unary(req, |p, who, r| {
            let region = region_ref(required("region", r.region.as_ref())?);
            p.revoke(who, region, r.grant_id).map(|()| pb::Empty {})
        })
    }

    async fn destroy_region(&self, req: Request<pb::RegionRef>) -> Result<Response<pb::Empty>, Status> {
        // Blocking: a replicated region's home tells the cluster first.
        self.blocking(req, |p, who, r| p.destroy_region(who, region_ref(&r)).map(|()| pb::Empty {})).await
    }

    async fn flush_region(
        &self,
        req: Request<pb::RegionRef>,
    ) -> Result<Response<pb::FlushRegionResponse>, Status> {
        self.blocking(req, |p, who, r| {
            Ok(pb::FlushRegionResponse { persistent: p.flush_region(who, region_ref(&r))? })
        })
        .await
    }

    type InstanceLogsStream = LogStream;

    async fn instance_logs(
        &self,
        req: Request<pb::InstanceLogsRequest>,
    ) -> Result<Response<LogStream>, Status> {
        self.unary(req, |p, who, r| {
            let i = required("instance", r.instance)?;
            let to_message: fn(LogEntry) -> Result<pb::LogLine, Status> = convert::log_line_to;
            Ok(p.instance_logs(who, &i.tenant, &i.name, r.follow, r.tail)?.map(to_message))
        })
    }

    type WatchRegionStream = WatchStream;

    async fn watch_region(&self, req: Request<pb::RegionRef>) -> Result<Response<WatchStream>, Status> {
        self.unary(req, |p, who, r| {
            let to_message: fn(RegionEvent) -> Result<pb::RegionEvent, Status> = convert::event_to;
            Ok(p.watch_region(who, region_ref(&r))?.map(to_message))
        })
    }

    type RunScenarioStream = ScenarioStream;

    async fn run_scenario(
        &self,
        req: Request<pb::RunScenarioRequest>,
    ) -> Result<Response<ScenarioStream>, Status> {
        self.unary(req, |p, who, r| {
            let to_message: fn(ApiResult<ScenarioProgress>) -> Result<pb::ScenarioProgress, Status> =
                convert::progress_to;
            Ok(p.run_scenario(who, &convert::scenario_from(r))?.map(to_message))
        })
    }

    async fn stats(&self, req: Request<pb::StatsRequest>) -> Result<Response<pb::StatsResponse>, Status> {
        self.unary(req, |p, who, r| Ok(convert::stats_to(p.stats(who, &r.tenant)?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pb::broker_server::Broker as _;

    /// The service without its interceptor (only this crate can build one) refuses every call: a
    /// request without an identity is never taken for the admin's.
    #[test]
    fn a_call_that_skipped_the_interceptor_is_unauthenticated() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let broker = Arc::new(broker::Broker::new(broker::BrokerConfig::default()).expect("broker"));
        let plane = Arc::new(ControlPlane::open(broker, "root", None).expect("plane"));
        let service = ControlService::new(plane);
        rt.block_on(async {
            let mut anonymous = Request::new(pb::CreateTenantRequest { name: "acme".into(), quotas: None });
            // Even the admin token in the metadata does not help: only the interceptor authenticates.
            anonymous.metadata_mut().insert("authorization", "Bearer root".parse().expect("ascii"));
            let refused = service.create_tenant(anonymous).await.expect_err("refused");
            assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
            let listed = service.list_tenants(Request::new(pb::ListTenantsRequest {})).await;
            assert_eq!(listed.expect_err("refused").code(), tonic::Code::Unauthenticated);

            let mut admin = Request::new(pb::CreateTenantRequest { name: "acme".into(), quotas: None });
            admin.extensions_mut().insert(Identity::Admin);
            let created = service.create_tenant(admin).await.expect("the admin creates a tenant");
            assert_eq!(created.get_ref().name, "acme");
        });
    }
}
