//! gRPC server reflection, both `grpc.reflection.v1` and `grpc.reflection.v1alpha`, answered from one
//! index of the descriptors of every service the daemon serves.
//!
//! Tools such as `grpcurl` and grpcio's reflection client discover the API through reflection, and many
//! still speak only `v1alpha`; tonic-reflection serves one version per service and ends the whole stream
//! with a `NOT_FOUND` status when a symbol is unknown, where the protocol answers with an
//! `error_response` and keeps the stream open. So the daemon serves its own implementation:
//! [`ReflectionIndex`] decodes the file descriptor sets once, at start, and answers version-neutral
//! [`Query`]s; [`ReflectionV1`] and [`ReflectionV1Alpha`] are thin adapters that only convert their
//! version's messages to and from it. The two versions' messages are identical apart from their package,
//! so one macro writes both adapters and they cannot drift apart.
//!
//! Every request field is client input: an unknown or empty name, a huge string, a request without a
//! `message_request` all get an `error_response` ([`ReflectionError`]) on the still-open stream, and a
//! name is echoed in an error message only up to [`SHOWN_NAME_BYTES`].
//! The codes in an `error_response` are data inside a message, not the status of a call, so they are
//! mapped here ([`ReflectionError::code`]); `status.rs` stays the only place that maps errors to the
//! statuses that end a call.

use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::sync::Arc;

use prost::Message as _;
use prost_types::{DescriptorProto, EnumDescriptorProto, FieldDescriptorProto, FileDescriptorProto};
use tokio_stream::{Stream, StreamExt as _};
use tonic::{Code, Request, Response, Status, Streaming};
use tonic_reflection::pb::{v1, v1alpha};

/// At most this many bytes of a client-supplied name appear in an error message, so a request carrying
/// a multi-megabyte name does not get it back twice over.
pub const SHOWN_NAME_BYTES: usize = 128;

/// Why the descriptor sets could not be indexed: a defect in the sets compiled into the daemon, never
/// client input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IndexError {
    /// A descriptor set, or a file in it, is not valid protobuf.
    #[error("descriptor set does not decode: {0}")]
    Decode(#[from] prost::DecodeError),
    /// A file descriptor has no name.
    #[error("a file descriptor has no name")]
    UnnamedFile,
    /// A definition in a file has no name.
    #[error("{file}: {kind} without a name in scope `{scope}`")]
    Unnamed {
        /// The file.
        file: String,
        /// What kind of definition (message, field, enum, ...).
        kind: &'static str,
        /// The full name of the scope it is defined in.
        scope: String,
    },
    /// An extension lacks the message it extends or its field number.
    #[error("{file}: extension `{extension}` has no extendee or no number")]
    IncompleteExtension {
        /// The file.
        file: String,
        /// The extension's full name.
        extension: String,
    },
    /// Two sets hold a file of the same name with different contents.
    #[error("file `{0}` is registered twice with different contents")]
    ConflictingFile(String),
    /// Two definitions have the same full name.
    #[error("`{symbol}` is defined in both `{first}` and `{second}`")]
    DuplicateSymbol {
        /// The full name.
        symbol: String,
        /// The file that defined it first.
        first: String,
        /// The file that defined it again.
        second: String,
    },
    /// A file imports one that no registered set holds, so clients could not resolve it.
    #[error("`{file}` imports `{dependency}`, which no descriptor set holds")]
    MissingDependency {
        /// The importing file.
        file: String,
        /// The file it imports.
        dependency: String,
    },
}

/// Why a reflection request was answered with an `error_response`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReflectionError {
    /// The request sets none of the `message_request` fields.
    #[error("missing field `message_request`")]
    MissingMessageRequest,
    /// No file of that name (shortened to [`SHOWN_NAME_BYTES`]).
    #[error("file `{0}` not found")]
    FileNotFound(String),
    /// No definition of that full name (shortened to [`SHOWN_NAME_BYTES`]).
    #[error("symbol `{0}` not found")]
    SymbolNotFound(String),
    /// No extension of that message with that number.
    #[error("no extension {number} of `{containing_type}` found")]
    ExtensionNotFound {
        /// The extended message's full name (shortened to [`SHOWN_NAME_BYTES`]).
        containing_type: String,
        /// The extension's field number.
        number: i32,
    },
}

impl ReflectionError {
    /// The gRPC status code that the `error_response` carries.
    pub fn code(&self) -> Code {
        match self {
            ReflectionError::MissingMessageRequest => Code::InvalidArgument,
            ReflectionError::FileNotFound(_)
            | ReflectionError::SymbolNotFound(_)
            | ReflectionError::ExtensionNotFound { .. } => Code::NotFound,
        }
    }
}

/// A client-supplied name, shortened to at most [`SHOWN_NAME_BYTES`] (on a character boundary) for an
/// error message.
fn shown(name: &str) -> String {
    if name.len() <= SHOWN_NAME_BYTES {
        return name.to_owned();
    }
    format!("{}…", &name[..name.floor_char_boundary(SHOWN_NAME_BYTES)])
}

/// A full name as clients may send it: descriptors themselves write type names with a leading dot
/// (`.broker.v1.Quotas`), which is accepted too.
fn full_name(name: &str) -> &str {
    name.strip_prefix('.').unwrap_or(name)
}

/// A reflection request, independent of the protocol version it came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Query<'r> {
    /// `file_by_filename`.
    FileByFilename(&'r str),
    /// `file_containing_symbol`: a service, method, message, field, oneof, enum, enum value or
    /// extension, by full name.
    FileContainingSymbol(&'r str),
    /// `file_containing_extension`.
    FileContainingExtension {
        /// The extended message's full name.
        containing_type: &'r str,
        /// The extension's field number.
        number: i32,
    },
    /// `all_extension_numbers_of_type`.
    AllExtensionNumbersOfType(&'r str),
    /// `list_services`.
    ListServices,
}

/// The answer to a [`Query`], borrowing from the index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer<'i> {
    /// Encoded `FileDescriptorProto`s: the file asked for first, then everything it imports,
    /// transitively, so a client can build its descriptors without asking again.
    Files(Vec<&'i [u8]>),
    /// The field numbers of the known extensions of a message.
    ExtensionNumbers {
        /// The message's full name.
        base_type_name: String,
        /// Its extensions' numbers, ascending.
        numbers: Vec<i32>,
    },
    /// The full names of the services, sorted.
    Services(&'i [String]),
}

/// One file of the index.
#[derive(Debug)]
struct IndexedFile {
    name: String,
    /// The file's bytes exactly as the descriptor set holds them: decoding and encoding again would drop
    /// any field prost does not know, custom options for instance.
    encoded: Vec<u8>,
    /// The names of the files it imports, as the descriptor says.
    imports: Vec<String>,
    /// The file itself, then its transitive imports, each once (indices into `files`).
    closure: Vec<usize>,
}

/// The encoded files of a `FileDescriptorSet`, left undecoded (`repeated FileDescriptorProto file = 1`
/// read as bytes), so they can be served exactly as compiled.
#[derive(Clone, PartialEq, prost::Message)]
struct EncodedFileSet {
    #[prost(bytes = "vec", repeated, tag = "1")]
    file: Vec<Vec<u8>>,
}

/// Every file, service and symbol of a group of descriptor sets, for answering reflection requests.
#[derive(Debug)]
pub struct ReflectionIndex {
    files: Vec<IndexedFile>,
    file_by_name: HashMap<String, usize>,
    /// Full name (without a leading dot) to the defining file.
    symbols: HashMap<String, usize>,
    /// Extended message's full name to extension number to the defining file.
    extensions: HashMap<String, BTreeMap<i32, usize>>,
    services: Vec<String>,
}

impl ReflectionIndex {
    /// The index of everything [`super::serve`] serves: `broker.v1`, `grpc.health.v1` and both versions
    /// of reflection itself.
    ///
    /// # Errors
    /// An [`IndexError`] if a compiled-in descriptor set is defective.
    pub fn daemon() -> Result<ReflectionIndex, IndexError> {
        ReflectionIndex::new(&[
            broker_proto::pb::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
            v1::FILE_DESCRIPTOR_SET,
            v1alpha::FILE_DESCRIPTOR_SET,
        ])
    }

    /// Indexes encoded `FileDescriptorSet`s. A file present in several sets with the same bytes is
    /// indexed once.
    ///
    /// # Errors
    /// An [`IndexError`] if a set does not decode, a definition has no name, a name is defined twice,
    /// or a file imports one that none of the sets holds.
    pub fn new(encoded_sets: &[&[u8]]) -> Result<ReflectionIndex, IndexError> {
        let mut index = ReflectionIndex {
            files: Vec::new(),
            file_by_name: HashMap::new(),
            symbols: HashMap::new(),
            extensions: HashMap::new(),
            services: Vec::new(),
        };
        for set in encoded_sets {
            for encoded in EncodedFileSet::decode(*set)?.file {
                index.add_file(encoded)?;
            }
        }
        index.resolve_imports()?;
        index.services.sort();
        Ok(index)
    }

    /// Answers one query.
    ///
    /// # Errors
    /// A [`ReflectionError`] naming what was not found.
    pub fn answer(&self, query: Query<'_>) -> Result<Answer<'_>, ReflectionError> {
        match query {
            Query::ListServices => Ok(Answer::Services(&self.services)),
            Query::FileByFilename(name) => self
                .file_by_name
                .get(name)
                .map(|&file| self.with_imports(file))
                .ok_or_else(|| ReflectionError::FileNotFound(shown(name))),
            Query::FileContainingSymbol(symbol) => self
                .symbols
                .get(full_name(symbol))
                .map(|&file| self.with_imports(file))
                .ok_or_else(|| ReflectionError::SymbolNotFound(shown(symbol))),
            Query::FileContainingExtension { containing_type, number } => self
                .extensions
                .get(full_name(containing_type))
                .and_then(|numbers| numbers.get(&number))
                .map(|&file| self.with_imports(file))
                .ok_or_else(|| ReflectionError::ExtensionNotFound {
                    containing_type: shown(containing_type),
                    number,
                }),
            // An unknown type gets an empty list rather than NOT_FOUND: clients such as grpcurl ask for
            // the extensions of every message they meet, well-known types the index does not hold
            // included, and give up on the first error (grpc/grpc-rust#1077).
            Query::AllExtensionNumbersOfType(name) => {
                let name = full_name(name);
                let numbers = self
                    .extensions
                    .get(name)
                    .map(|numbers| numbers.keys().copied().collect())
                    .unwrap_or_default();
                Ok(Answer::ExtensionNumbers { base_type_name: name.to_owned(), numbers })
            }
        }
    }

    fn with_imports(&self, file: usize) -> Answer<'_> {
        Answer::Files(self.files[file].closure.iter().map(|&f| self.files[f].encoded.as_slice()).collect())
    }

    fn add_file(&mut self, encoded: Vec<u8>) -> Result<(), IndexError> {
        let descriptor = FileDescriptorProto::decode(encoded.as_slice())?;
        let name = descriptor.name.clone().ok_or(IndexError::UnnamedFile)?;
        if let Some(&known) = self.file_by_name.get(&name) {
            return if self.files[known].encoded == encoded {
                Ok(())
            } else {
                Err(IndexError::ConflictingFile(name))
            };
        }
        let file = self.files.len();
        self.files.push(IndexedFile {
            name: name.clone(),
            encoded,
            imports: descriptor.dependency.clone(),
            closure: Vec::new(),
        });
        self.file_by_name.insert(name, file);
        Definitions { index: self, file }.file(&descriptor)
    }

    /// Resolves every file's imports into its closure: the file, then each file it imports, depth first,
    /// each once.
    fn resolve_imports(&mut self) -> Result<(), IndexError> {
        for file in 0..self.files.len() {
            let mut closure = vec![file];
            let mut next = 0;
            while let Some(&current) = closure.get(next) {
                next += 1;
                for import in &self.files[current].imports {
                    let Some(&imported) = self.file_by_name.get(import) else {
                        return Err(IndexError::MissingDependency {
                            file: self.files[current].name.clone(),
                            dependency: import.clone(),
                        });
                    };
                    if !closure.contains(&imported) {
                        closure.push(imported);
                    }
                }
            }
            self.files[file].closure = closure;
        }
        Ok(())
    }
}

/// Registers the definitions of one file of the index.
struct Definitions<'a> {
    index: &'a mut ReflectionIndex,
    file: usize,
}

impl Definitions<'_> {
    fn file(&mut self, descriptor: &FileDescriptorProto) -> Result<(), IndexError> {
        let package = descriptor.package.clone().unwrap_or_default();
        for message in &descriptor.message_type {
            self.message(&package, message)?;
        }
        for enumeration in &descriptor.enum_type {
            self.enumeration(&package, enumeration)?;
        }
        for extension in &descriptor.extension {
            self.extension(&package, extension)?;
        }
        for service in &descriptor.service {
            let service_name = self.define(&package, "service", service.name.as_deref())?;
            for method in &service.method {
                self.define(&service_name, "method", method.name.as_deref())?;
            }
            self.index.services.push(service_name);
        }
        Ok(())
    }

    fn message(&mut self, scope: &str, message: &DescriptorProto) -> Result<(), IndexError> {
        let name = self.define(scope, "message", message.name.as_deref())?;
        for field in &message.field {
            self.define(&name, "field", field.name.as_deref())?;
        }
        for oneof in &message.oneof_decl {
            self.define(&name, "oneof", oneof.name.as_deref())?;
        }
        for nested in &message.nested_type {
            self.message(&name, nested)?;
        }
        for enumeration in &message.enum_type {
            self.enumeration(&name, enumeration)?;
        }
        for extension in &message.extension {
            self.extension(&name, extension)?;
        }
        Ok(())
    }

    /// An enum's values are defined in the enum's own scope, next to the enum, not inside it (protobuf's
    /// C++ scoping): `grpc.health.v1.HealthCheckResponse.SERVING`.
    fn enumeration(&mut self, scope: &str, enumeration: &EnumDescriptorProto) -> Result<(), IndexError> {
        self.define(scope, "enum", enumeration.name.as_deref())?;
        for value in &enumeration.value {
            self.define(scope, "enum value", value.name.as_deref())?;
        }
        Ok(())
    }

    fn extension(&mut self, scope: &str, extension: &FieldDescriptorProto) -> Result<(), IndexError> {
        let name = self.define(scope, "extension", extension.name.as_deref())?;
        let (Some(extendee), Some(number)) = (extension.extendee.as_deref(), extension.number) else {
            return Err(IndexError::IncompleteExtension { file: self.file_name(), extension: name });
        };
        self.index.extensions.entry(full_name(extendee).to_owned()).or_default().insert(number, self.file);
        Ok(())
    }

    /// Registers `scope.name` as defined by this file and returns it.
    fn define(&mut self, scope: &str, kind: &'static str, name: Option<&str>) -> Result<String, IndexError> {
        let Some(name) = name else {
            return Err(IndexError::Unnamed { file: self.file_name(), kind, scope: scope.to_owned() });
        };
        let full = if scope.is_empty() { name.to_owned() } else { format!("{scope}.{name}") };
        if let Some(&first) = self.index.symbols.get(&full) {
            return Err(IndexError::DuplicateSymbol {
                symbol: full,
                first: self.index.files[first].name.clone(),
                second: self.file_name(),
            });
        }
        self.index.symbols.insert(full.clone(), self.file);
        Ok(full)
    }

    fn file_name(&self) -> String {
        self.index.files[self.file].name.clone()
    }
}

/// The response stream of a reflection call: one response per request, in order.
pub type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Writes the adapter of one reflection protocol version: the service type, its tonic trait impl, and
/// the conversions between the version's messages and [`Query`]/[`Answer`]. Both versions' modules have
/// the same message and field names, so the conversions are written once.
macro_rules! reflection_adapter {
    ($(#[$doc:meta])* $service:ident, $pb:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone)]
        pub struct $service {
            index: Arc<ReflectionIndex>,
        }

        impl $service {
            /// An adapter answering from `index`.
            pub fn new(index: Arc<ReflectionIndex>) -> $service {
                $service { index }
            }

            /// The tonic service, for `Server::add_service`.
            pub fn into_server(self) -> $pb::server_reflection_server::ServerReflectionServer<$service> {
                $pb::server_reflection_server::ServerReflectionServer::new(self)
            }

            /// Answers one request: a response for each, an `error_response` for a bad one.
            fn respond(index: &ReflectionIndex, request: $pb::ServerReflectionRequest) -> $pb::ServerReflectionResponse {
                use $pb::server_reflection_request::MessageRequest as Asked;
                use $pb::server_reflection_response::MessageResponse as Answered;
                let query = match &request.message_request {
                    None => None,
                    Some(Asked::FileByFilename(name)) => Some(Query::FileByFilename(name)),
                    Some(Asked::FileContainingSymbol(symbol)) => Some(Query::FileContainingSymbol(symbol)),
                    Some(Asked::FileContainingExtension(extension)) => Some(Query::FileContainingExtension {
                        containing_type: &extension.containing_type,
                        number: extension.extension_number,
                    }),
                    Some(Asked::AllExtensionNumbersOfType(name)) => Some(Query::AllExtensionNumbersOfType(name)),
                    // The field's content is not checked (the protocol says so).
                    Some(Asked::ListServices(_)) => Some(Query::ListServices),
                };
                let answered = match query.ok_or(ReflectionError::MissingMessageRequest).and_then(|q| index.answer(q)) {
                    Ok(Answer::Files(files)) => Answered::FileDescriptorResponse($pb::FileDescriptorResponse {
                        file_descriptor_proto: files.into_iter().map(<[u8]>::to_vec).collect(),
                    }),
                    Ok(Answer::ExtensionNumbers { base_type_name, numbers }) => {
                        Answered::AllExtensionNumbersResponse($pb::ExtensionNumberResponse {
                            base_type_name,
                            extension_number: numbers,
                        })
                    }
                    Ok(Answer::Services(names)) => Answered::ListServicesResponse($pb::ListServiceResponse {
                        service: names.iter().map(|name| $pb::ServiceResponse { name: name.clone() }).collect(),
                    }),
                    Err(error) => Answered::ErrorResponse($pb::ErrorResponse {
                        error_code: error.code().into(),
                        error_message: error.to_string(),
                    }),
                };
                $pb::ServerReflectionResponse {
                    valid_host: request.host.clone(),
                    original_request: Some(request),
                    message_response: Some(answered),
                }
            }
        }

        #[tonic::async_trait]
        impl $pb::server_reflection_server::ServerReflection for $service {
            type ServerReflectionInfoStream = ResponseStream<$pb::ServerReflectionResponse>;

            /// Answers the requests of the stream in order, each as the response stream is read (so a
            /// client that stops reading stops the answering), until the client ends its side. A
            /// request that fails to decode ends the call with that status.
            async fn server_reflection_info(
                &self,
                request: Request<Streaming<$pb::ServerReflectionRequest>>,
            ) -> Result<Response<Self::ServerReflectionInfoStream>, Status> {
                let index = Arc::clone(&self.index);
                let responses = request
                    .into_inner()
                    .map(move |request| request.map(|request| $service::respond(&index, request)));
                Ok(Response::new(Box::pin(responses)))
            }
        }
    };
}

reflection_adapter!(
    /// The `grpc.reflection.v1.ServerReflection` service over a [`ReflectionIndex`].
    ReflectionV1,
    v1
);

reflection_adapter!(
    /// The `grpc.reflection.v1alpha.ServerReflection` service over a [`ReflectionIndex`], for the many
    /// clients (grpcurl, grpcio) that still speak only this version.
    ReflectionV1Alpha,
    v1alpha
);

#[cfg(test)]
mod tests {
    use prost_types::{
        DescriptorProto, EnumDescriptorProto, EnumValueDescriptorProto, FieldDescriptorProto,
        FileDescriptorProto, FileDescriptorSet,
    };

    use super::*;

    fn message(name: &str, nested: Vec<DescriptorProto>) -> DescriptorProto {
        DescriptorProto {
            name: Some(name.into()),
            field: vec![FieldDescriptorProto {
                name: Some("id".into()),
                number: Some(1),
                ..Default::default()
            }],
            nested_type: nested,
            ..Default::default()
        }
    }

    fn file(
        name: &str,
        package: &str,
        imports: &[&str],
        messages: Vec<DescriptorProto>,
    ) -> FileDescriptorProto {
        FileDescriptorProto {
            name: Some(name.into()),
            package: Some(package.into()),
            dependency: imports.iter().map(|&i| i.to_owned()).collect(),
            message_type: messages,
            ..Default::default()
        }
    }

    fn set(files: Vec<FileDescriptorProto>) -> Vec<u8> {
        FileDescriptorSet { file: files }.encode_to_vec()
    }

    fn files_of(answer: Answer<'_>) -> Vec<String> {
        let Answer::Files(files) = answer else { panic!("expected files, got {answer:?}") };
        files
            .iter()
            .map(|f| FileDescriptorProto::decode(*f).expect("decodes").name.unwrap_or_default())
            .collect()
    }

    #[test]
    fn the_daemon_index_builds_and_lists_every_served_service() {
        let index = ReflectionIndex::daemon().expect("the compiled-in sets are valid");
        let Ok(Answer::Services(services)) = index.answer(Query::ListServices) else { panic!("services") };
        assert_eq!(
            services,
            [
                "broker.v1.Broker",
                "grpc.health.v1.Health",
                "grpc.reflection.v1.ServerReflection",
                "grpc.reflection.v1alpha.ServerReflection",
            ]
        );
        for symbol in [
            "grpc.health.v1.HealthCheckResponse.ServingStatus",
            "grpc.health.v1.HealthCheckResponse.SERVING",
            ".broker.v1.Quotas",
            "broker.v1.Quotas.memory_bytes",
            "broker.v1.MODE_HANDLE",
        ] {
            assert!(index.answer(Query::FileContainingSymbol(symbol)).is_ok(), "{symbol}");
        }
    }

    #[test]
    fn nested_messages_resolve_with_their_imports() {
        let base = file("base.proto", "t", &[], vec![message("Base", vec![])]);
        let top =
            file("top.proto", "t", &["base.proto"], vec![message("Outer", vec![message("Inner", vec![])])]);
        let index = ReflectionIndex::new(&[&set(vec![base, top])]).expect("index");
        let found = index.answer(Query::FileContainingSymbol("t.Outer.Inner.id")).expect("nested field");
        assert_eq!(files_of(found), ["top.proto", "base.proto"]);
        assert_eq!(
            files_of(index.answer(Query::FileByFilename("base.proto")).expect("file")),
            ["base.proto"]
        );
    }

    #[test]
    fn defective_sets_are_refused_with_what_is_wrong() {
        let a = file("a.proto", "t", &[], vec![message("Same", vec![])]);
        let b = file("b.proto", "t", &[], vec![message("Same", vec![])]);
        assert_eq!(
            ReflectionIndex::new(&[&set(vec![a.clone(), b])]).map(drop),
            Err(IndexError::DuplicateSymbol {
                symbol: "t.Same".into(),
                first: "a.proto".into(),
                second: "b.proto".into()
            })
        );
        let needs = file("needs.proto", "t", &["gone.proto"], vec![]);
        assert_eq!(
            ReflectionIndex::new(&[&set(vec![needs])]).map(drop),
            Err(IndexError::MissingDependency {
                file: "needs.proto".into(),
                dependency: "gone.proto".into()
            })
        );
        let mut other_a = a.clone();
        other_a.package = Some("u".into());
        assert_eq!(
            ReflectionIndex::new(&[&set(vec![a.clone()]), &set(vec![other_a])]).map(drop),
            Err(IndexError::ConflictingFile("a.proto".into()))
        );
        // The same file in two sets is one file.
        assert!(ReflectionIndex::new(&[&set(vec![a.clone()]), &set(vec![a])]).is_ok());
        let unnamed = FileDescriptorProto {
            name: Some("e.proto".into()),
            enum_type: vec![EnumDescriptorProto {
                name: Some("E".into()),
                value: vec![EnumValueDescriptorProto::default()],
                ..Default::default()
            }],
            ..Default::default()
        };
        assert_eq!(
            ReflectionIndex::new(&[&set(vec![unnamed])]).map(drop),
            Err(IndexError::Unnamed { file: "e.proto".into(), kind: "enum value", scope: String::new() })
        );
        assert!(matches!(ReflectionIndex::new(&[b"\xff"]), Err(IndexError::Decode(_))));
    }

    #[test]
    fn unknown_names_are_not_found_and_shown_shortened() {
        let index = ReflectionIndex::daemon().expect("index");
        let huge = "é".repeat(1 << 20);
        let Err(error) = index.answer(Query::FileContainingSymbol(&huge)) else { panic!("found") };
        assert_eq!(error.code(), Code::NotFound);
        assert!(error.to_string().len() < SHOWN_NAME_BYTES + 32, "{error}");
        for query in [
            Query::FileByFilename(""),
            Query::FileContainingSymbol(""),
            Query::FileContainingSymbol("broker.v1"),
            Query::FileContainingExtension { containing_type: "broker.v1.Quotas", number: -1 },
        ] {
            assert_eq!(index.answer(query).map_err(|e| e.code()), Err(Code::NotFound), "{query:?}");
        }
        assert_eq!(
            index.answer(Query::AllExtensionNumbersOfType("google.protobuf.Empty")),
            Ok(Answer::ExtensionNumbers { base_type_name: "google.protobuf.Empty".into(), numbers: vec![] })
        );
    }
}
