//! Stock gRPC tools work against a node: server reflection answers in both protocol versions
//! (v1, spoken by grpcurl, and v1alpha, still the only one of grpcio-reflection and many GUI
//! tools), listing the services and describing them down to their methods.

mod common;

use prost::Message;
use prost_types::FileDescriptorProto;
use tokio_stream::StreamExt;

use common::{test_config, TestNode};

/// What one reflection version tells about a node: the service names it lists, and the
/// method names of `sessiond.v1.SessionAuthority` from the file that defines it.
#[derive(Debug)]
struct Reflected {
    services: Vec<String>,
    authority_methods: Vec<String>,
}

/// A function asking a node through one generated reflection client (`v1` or `v1alpha`).
macro_rules! reflect_with {
    ($name:ident, $pb:path) => {
        async fn $name(endpoint: String) -> Reflected {
            use pb::server_reflection_client::ServerReflectionClient;
            use pb::server_reflection_request::MessageRequest;
            use pb::server_reflection_response::MessageResponse;
            use $pb as pb;
            let channel = tonic::transport::Channel::from_shared(endpoint)
                .expect("an endpoint URL")
                .connect()
                .await
                .expect("connects");
            let mut client = ServerReflectionClient::new(channel);
            let requests = [
                MessageRequest::ListServices(String::new()),
                MessageRequest::FileContainingSymbol("sessiond.v1.SessionAuthority".into()),
            ]
            .map(|m| pb::ServerReflectionRequest {
                host: String::new(),
                message_request: Some(m),
            });
            let mut answers = client
                .server_reflection_info(tokio_stream::iter(requests))
                .await
                .expect("reflection answers")
                .into_inner();
            let mut reflected = Reflected {
                services: Vec::new(),
                authority_methods: Vec::new(),
            };
            while let Some(answer) = answers.next().await {
                match answer.expect("an answer").message_response {
                    Some(MessageResponse::ListServicesResponse(l)) => {
                        reflected.services = l.service.into_iter().map(|s| s.name).collect();
                    }
                    Some(MessageResponse::FileDescriptorResponse(f)) => {
                        for bytes in f.file_descriptor_proto {
                            let file = FileDescriptorProto::decode(bytes.as_slice())
                                .expect("a file descriptor");
                            for service in file.service {
                                if service.name() == "SessionAuthority" {
                                    reflected.authority_methods = service
                                        .method
                                        .iter()
                                        .map(|m| m.name().to_owned())
                                        .collect();
                                }
                            }
                        }
                    }
                    other => panic!("unexpected reflection answer: {other:?}"),
                }
            }
            reflected
        }
    };
}

reflect_with!(reflect_v1, tonic_reflection::pb::v1);
reflect_with!(reflect_v1alpha, tonic_reflection::pb::v1alpha);

#[tokio::test]
async fn reflection_v1_and_v1alpha_list_and_describe_the_services() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(test_config(dir.path())).await;
    let endpoint = format!("http://{}", node.node.addr());
    for reflected in [
        reflect_v1(endpoint.clone()).await,
        reflect_v1alpha(endpoint.clone()).await,
    ] {
        for service in [
            "sessiond.v1.SessionAuthority",
            "sessiond.v1.Cluster",
            "grpc.health.v1.Health",
        ] {
            assert!(
                reflected.services.iter().any(|s| s == service),
                "{service} not listed: {reflected:?}"
            );
        }
        for method in [
            "CreateSession",
            "Rotate",
            "Lookup",
            "Revoke",
            "WatchRevocations",
        ] {
            assert!(
                reflected.authority_methods.iter().any(|m| m == method),
                "{method} not described: {reflected:?}"
            );
        }
    }
    node.stop().await;
}
