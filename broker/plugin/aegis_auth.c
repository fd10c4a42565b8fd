/*
 * Aegis Event Bus: Mosquitto 2.0 plugin that binds each connection to its certificate and
 * keeps agents to their own subscriptions.
 *
 * Mosquitto's ACL file checks what is published and delivered, never what a client
 * subscribes to, and use_identity_as_username skips every authentication hook. So:
 *
 * - MOSQ_EVT_BASIC_AUTH (the listener sets require_certificate and NOT
 *   use_identity_as_username, so this hook runs for every CONNECT, before Mosquitto
 *   takes over a session with the same client id): the certificate's CN becomes the
 *   username (whatever the client sent must be empty or equal to it). An agent's client
 *   id must equal its CN; a service identity (plugin_opt_services) must use its CN or
 *   "<CN>-..." as client id. Anything else is refused with "not authorised", so no
 *   certificate can take over another identity's session.
 * - MOSQ_EVT_ACL_CHECK, SUBSCRIBE: an agent may subscribe to its own inbox and the
 *   broadcast topic only, literally (no wildcard, no $share). Services may subscribe to
 *   anything under plugin_opt_topic_root, shared or not. Publish and delivery checks are
 *   deferred to the ACL file, which runs after this plugin.
 *
 * Options (written by `manage.py setup_broker`, see broker/mosquitto.py):
 *   plugin_opt_services     space-separated CNs of the bridge/dispatcher identities
 *   plugin_opt_topic_root   "aegis"
 *   plugin_opt_agent_read   space-separated topics an agent may subscribe to, %u = its CN
 */
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include <openssl/x509.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>

#define MAX_WORDS 16
#define MAX_TEXT 1024
#define MAX_CN 256

static mosquitto_plugin_id_t *plugin_id;
static char services_text[MAX_TEXT];
static char agent_read_text[MAX_TEXT];
static char topic_root[MAX_CN];
static char *services[MAX_WORDS];
static int service_count;
static char *agent_read[MAX_WORDS];
static int agent_read_count;

static int split(char *text, char **words)
{
	int count = 0;
	for(char *word = strtok(text, " \t,"); word && count < MAX_WORDS; word = strtok(NULL, " \t,")){
		words[count++] = word;
	}
	return count;
}

static bool is_service(const char *cn)
{
	for(int i = 0; i < service_count; i++){
		if(strcmp(cn, services[i]) == 0) return true;
	}
	return false;
}

static bool certificate_cn(const struct mosquitto *client, char *cn, size_t size)
{
	X509 *cert = mosquitto_client_certificate(client);
	if(cert == NULL) return false;
	X509_NAME *subject = X509_get_subject_name(cert);
	int length = subject ? X509_NAME_get_text_by_NID(subject, NID_commonName, cn, (int)size) : -1;
	X509_free(cert);
	/* A CN with an embedded NUL would read shorter than it is: refuse it. */
	return length > 0 && (size_t)length < size && strlen(cn) == (size_t)length;
}

static bool client_id_allowed(const char *cn, const char *client_id)
{
	if(client_id == NULL) return false;
	if(strcmp(client_id, cn) == 0) return true;
	if(!is_service(cn)) return false;
	size_t n = strlen(cn);
	return strncmp(client_id, cn, n) == 0 && client_id[n] == '-';
}

static int on_basic_auth(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_basic_auth *ed = event_data;
	char cn[MAX_CN];
	const char *client_id = mosquitto_client_id(ed->client);
	const char *address = mosquitto_client_address(ed->client);
	(void)event;
	(void)userdata;

	if(!certificate_cn(ed->client, cn, sizeof(cn))){
		mosquitto_log_printf(MOSQ_LOG_NOTICE, "aegis_auth: refused %s from %s: no client certificate with a CN",
				client_id ? client_id : "?", address ? address : "?");
		return MOSQ_ERR_AUTH;
	}
	if(ed->username && ed->username[0] && strcmp(ed->username, cn) != 0){
		mosquitto_log_printf(MOSQ_LOG_NOTICE, "aegis_auth: refused %s from %s: username does not match certificate CN %s",
				client_id ? client_id : "?", address ? address : "?", cn);
		return MOSQ_ERR_AUTH;
	}
	if(!client_id_allowed(cn, client_id)){
		mosquitto_log_printf(MOSQ_LOG_NOTICE, "aegis_auth: refused client id %s from %s: certificate CN %s may only use its own",
				client_id ? client_id : "?", address ? address : "?", cn);
		return MOSQ_ERR_AUTH;
	}
	if(mosquitto_set_username(ed->client, cn) != MOSQ_ERR_SUCCESS) return MOSQ_ERR_AUTH;
	return MOSQ_ERR_SUCCESS;
}

static bool under_root(const char *topic)
{
	size_t n = strlen(topic_root);
	return strncmp(topic, topic_root, n) == 0 && (topic[n] == '/' || topic[n] == '\0');
}

static bool agent_may_subscribe(const char *cn, const char *topic)
{
	char allowed[MAX_TEXT];
	for(int i = 0; i < agent_read_count; i++){
		const char *pattern = agent_read[i];
		const char *mark = strstr(pattern, "%u");
		if(mark){
			int written = snprintf(allowed, sizeof(allowed), "%.*s%s%s", (int)(mark - pattern), pattern, cn, mark + 2);
			if(written < 0 || (size_t)written >= sizeof(allowed)) continue;
		}else{
			snprintf(allowed, sizeof(allowed), "%s", pattern);
		}
		if(strcmp(topic, allowed) == 0) return true;
	}
	return false;
}

static int on_acl_check(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_acl_check *ed = event_data;
	const char *username = mosquitto_client_username(ed->client);
	(void)event;
	(void)userdata;

	if(username == NULL) return MOSQ_ERR_ACL_DENIED;
	if(ed->access == MOSQ_ACL_UNSUBSCRIBE) return MOSQ_ERR_SUCCESS;
	if(ed->access != MOSQ_ACL_SUBSCRIBE) return MOSQ_ERR_PLUGIN_DEFER; /* publish/deliver: the ACL file */

	if(is_service(username)){
		const char *topic = ed->topic;
		if(strncmp(topic, "$share/", 7) == 0){
			const char *rest = strchr(topic + 7, '/');
			if(rest == NULL) return MOSQ_ERR_ACL_DENIED;
			topic = rest + 1;
		}
		return under_root(topic) ? MOSQ_ERR_SUCCESS : MOSQ_ERR_ACL_DENIED;
	}
	if(agent_may_subscribe(username, ed->topic)) return MOSQ_ERR_SUCCESS;
	mosquitto_log_printf(MOSQ_LOG_NOTICE, "aegis_auth: denied subscription of %s to %s", username, ed->topic);
	return MOSQ_ERR_ACL_DENIED;
}

static void copy_option(char *target, size_t size, const char *value)
{
	snprintf(target, size, "%s", value ? value : "");
}

int mosquitto_plugin_version(int supported_version_count, const int *supported_versions)
{
	for(int i = 0; i < supported_version_count; i++){
		if(supported_versions[i] == 5) return 5;
	}
	return -1;
}

int mosquitto_plugin_init(mosquitto_plugin_id_t *identifier, void **userdata, struct mosquitto_opt *options, int option_count)
{
	(void)userdata;
	plugin_id = identifier;
	copy_option(topic_root, sizeof(topic_root), "aegis");
	for(int i = 0; i < option_count; i++){
		if(strcmp(options[i].key, "services") == 0){
			copy_option(services_text, sizeof(services_text), options[i].value);
		}else if(strcmp(options[i].key, "agent_read") == 0){
			copy_option(agent_read_text, sizeof(agent_read_text), options[i].value);
		}else if(strcmp(options[i].key, "topic_root") == 0){
			copy_option(topic_root, sizeof(topic_root), options[i].value);
		}
	}
	service_count = split(services_text, services);
	agent_read_count = split(agent_read_text, agent_read);
	if(service_count == 0 || agent_read_count == 0 || topic_root[0] == '\0'){
		mosquitto_log_printf(MOSQ_LOG_ERR, "aegis_auth: plugin_opt_services, plugin_opt_agent_read and plugin_opt_topic_root are required");
		return MOSQ_ERR_INVAL;
	}
	int rc = mosquitto_callback_register(plugin_id, MOSQ_EVT_BASIC_AUTH, on_basic_auth, NULL, NULL);
	if(rc == MOSQ_ERR_SUCCESS) rc = mosquitto_callback_register(plugin_id, MOSQ_EVT_ACL_CHECK, on_acl_check, NULL, NULL);
	return rc;
}

int mosquitto_plugin_cleanup(void *userdata, struct mosquitto_opt *options, int option_count)
{
	(void)userdata;
	(void)options;
	(void)option_count;
	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_BASIC_AUTH, on_basic_auth, NULL);
	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_ACL_CHECK, on_acl_check, NULL);
	return MOSQ_ERR_SUCCESS;
}
